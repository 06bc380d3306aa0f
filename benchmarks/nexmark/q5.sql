-- q5: for each sliding window of 10 s advancing every 2 s, the auction(s)
-- with the most bids. Bids are counted per auction and window (the window
-- aggregate emits a window once the watermark passes its end), then a TopN
-- per window keeps every auction tied for the most (RANK() <= 1).
CREATE TABLE nexmark_q5 (
    auction      BIGINT,
    num          BIGINT,
    window_start TIMESTAMP(3),
    window_end   TIMESTAMP(3)
) WITH (connector = 'blackhole');

INSERT INTO nexmark_q5
SELECT auction, num, window_start, window_end
FROM (
    SELECT auction, num, window_start, window_end,
           RANK() OVER (PARTITION BY window_start ORDER BY num DESC) AS rk
    FROM (
        SELECT auction, count(*) AS num, window_start, window_end
        FROM hop(bid, descriptor(date_time), INTERVAL '2' SECOND, INTERVAL '10' SECOND)
        GROUP BY auction, window_start, window_end
    )
)
WHERE rk <= 1;
