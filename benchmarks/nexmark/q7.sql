-- q7: per 10-second tumbling window, the bid(s) with the highest price. A
-- TopN per window keeps every bid tied for the maximum (RANK() <= 1) and
-- emits the window once the watermark passes its end.
CREATE TABLE nexmark_q7 (
    auction   BIGINT,
    bidder    BIGINT,
    price     BIGINT,
    date_time TIMESTAMP(3)
) WITH (connector = 'blackhole');

INSERT INTO nexmark_q7
SELECT auction, bidder, price, date_time
FROM (
    SELECT auction, bidder, price, date_time,
           RANK() OVER (PARTITION BY window_start ORDER BY price DESC) AS rk
    FROM tumble(bid, descriptor(date_time), INTERVAL '10' SECOND)
)
WHERE rk <= 1;
