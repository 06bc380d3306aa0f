-- q14: bids worth 1 M to 50 M euros, labelled by time of day, with the
-- number of 'c' characters in `extra` counted by a Rust UDF (count_char).
CREATE TABLE nexmark_q14 (
    auction       BIGINT,
    bidder        BIGINT,
    price         DOUBLE,
    bid_time_type VARCHAR,
    date_time     TIMESTAMP(3),
    extra         VARCHAR,
    c_counts      BIGINT
) WITH (connector = 'blackhole');

INSERT INTO nexmark_q14
SELECT
    auction,
    bidder,
    0.908 * price AS price,
    CASE
        WHEN EXTRACT(HOUR FROM date_time) >= 8 AND EXTRACT(HOUR FROM date_time) <= 18 THEN 'dayTime'
        WHEN EXTRACT(HOUR FROM date_time) <= 6 OR EXTRACT(HOUR FROM date_time) >= 20 THEN 'nightTime'
        ELSE 'otherTime'
    END AS bid_time_type,
    date_time,
    extra,
    count_char(extra, 'c') AS c_counts
FROM bid
WHERE 0.908 * price > 1000000 AND 0.908 * price < 50000000;
