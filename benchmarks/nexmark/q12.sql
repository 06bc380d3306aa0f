-- q12: per bidder, the number of bids in each 10-second window of
-- processing time. proctime() stamps each row with the wall clock when it
-- is processed; the windows close by the wall clock (1 s after their end),
-- not by watermarks.
CREATE VIEW bid_proctime AS SELECT *, proctime() AS p_time FROM bid;

CREATE TABLE nexmark_q12 (
    bidder       BIGINT,
    bid_count    BIGINT,
    window_start TIMESTAMP(3),
    window_end   TIMESTAMP(3)
) WITH (connector = 'blackhole');

INSERT INTO nexmark_q12
SELECT bidder, count(*) AS bid_count, window_start, window_end
FROM tumble(bid_proctime, descriptor(p_time), INTERVAL '10' SECOND)
GROUP BY bidder, window_start, window_end;
