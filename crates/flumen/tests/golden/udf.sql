-- The count_char and regexp_extract UDFs and string splitting on Nexmark bids.
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
       count_char(extra, 'c') AS c_count, count_char('abcabc', 'c') AS constant,
       regexp_extract(url, '(&|^)channel_id=([^&]*)', 2) AS channel_id,
       regexp_extract(url, 'query=[0-9]') AS query
FROM bid
WHERE bidder % 2 = 1;
