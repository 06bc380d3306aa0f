-- q0: every bid, unchanged (the cost of the engine itself).
CREATE TABLE nexmark_q0 (
    auction   BIGINT,
    bidder    BIGINT,
    price     BIGINT,
    channel   VARCHAR,
    url       VARCHAR,
    date_time TIMESTAMP(3),
    extra     VARCHAR
) WITH (connector = 'blackhole');

INSERT INTO nexmark_q0
SELECT auction, bidder, price, channel, url, date_time, extra FROM bid;
