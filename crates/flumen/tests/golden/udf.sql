-- The count_char UDF and string splitting on Nexmark bids.
CREATE TABLE bid (
    auction   BIGINT,
    bidder    BIGINT,
    price     BIGINT,
    channel   VARCHAR,
    url       VARCHAR,
    date_time TIMESTAMP(3),
    extra     VARCHAR
) WITH (connector = 'nexmark', kind = 'bid', events = '60', seed = '3');

SELECT auction, bidder, price, channel, split_part(url, '/', 4) AS dir1,
       count_char(extra, 'c') AS c_count, count_char('abcabc', 'c') AS constant
FROM bid
WHERE bidder % 2 = 1;
