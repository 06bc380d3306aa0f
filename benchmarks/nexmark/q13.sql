-- q13: bids enriched with a value from a bounded side table, matched on
-- auction % 10000. The side table is a file: once it is read, the join keeps
-- only its 10,000 rows and no bid.
CREATE TABLE side_input (
    "key" BIGINT,
    value VARCHAR
) WITH (connector = 'filesystem', path = 'benchmarks/nexmark/data/side_input.csv', format = 'csv');

CREATE TABLE nexmark_q13 (
    auction   BIGINT,
    bidder    BIGINT,
    price     BIGINT,
    channel   VARCHAR,
    url       VARCHAR,
    date_time TIMESTAMP(3),
    extra     VARCHAR,
    value     VARCHAR
) WITH (connector = 'blackhole');

INSERT INTO nexmark_q13
SELECT B.auction, B.bidder, B.price, B.channel, B.url, B.date_time, B.extra, S.value
FROM bid AS B
JOIN side_input AS S ON B.auction % 10000 = S.key;
