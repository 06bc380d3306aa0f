-- A tumbling event-time window: bids per auction per 2-second window.
CREATE TABLE bid (
    auction   BIGINT,
    bidder    BIGINT,
    price     BIGINT,
    channel   VARCHAR,
    url       VARCHAR,
    date_time TIMESTAMP(3),
    extra     VARCHAR,
    WATERMARK FOR date_time AS date_time - INTERVAL '1' SECOND
) WITH (connector = 'nexmark', kind = 'bid', events = '500', rate = '100', seed = '5');

SELECT
    auction,
    date_bin(INTERVAL '2' SECOND, date_time) AS window_start,
    date_bin(INTERVAL '2' SECOND, date_time) + INTERVAL '2' SECOND AS window_end,
    count(*) AS bids,
    min(price) AS low,
    count(DISTINCT bidder) AS bidders
FROM bid
GROUP BY auction, date_bin(INTERVAL '2' SECOND, date_time)
HAVING count(*) > 3;
