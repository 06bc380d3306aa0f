-- q17: per auction and day, bids by price band and min, max, average
-- and sum of the price.
-- The day is a one-day tumbling window of event time, so each day's row is
-- emitted once, when the watermark passes midnight (Flink's q17 keeps an
-- updating row per day instead; for a bounded input both end with the same rows).
CREATE TABLE nexmark_q17 (
    auction    BIGINT,
    day        VARCHAR,
    total_bids BIGINT,
    rank1_bids BIGINT,
    rank2_bids BIGINT,
    rank3_bids BIGINT,
    min_price  BIGINT,
    max_price  BIGINT,
    avg_price  DOUBLE,
    sum_price  BIGINT
) WITH (connector = 'blackhole');

INSERT INTO nexmark_q17
SELECT
    auction,
    to_char(date_bin(INTERVAL '1' DAY, date_time), '%Y-%m-%d') AS day,
    count(*) AS total_bids,
    count(*) FILTER (WHERE price < 10000) AS rank1_bids,
    count(*) FILTER (WHERE price >= 10000 AND price < 1000000) AS rank2_bids,
    count(*) FILTER (WHERE price >= 1000000) AS rank3_bids,
    min(price) AS min_price,
    max(price) AS max_price,
    avg(price) AS avg_price,
    sum(price) AS sum_price
FROM bid
GROUP BY auction, date_bin(INTERVAL '1' DAY, date_time);
