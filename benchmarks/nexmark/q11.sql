-- q11: per bidder, the number of bids in each session of activity; a
-- session ends after 10 seconds without a bid. Each session is emitted once,
-- when the watermark passes its end (last bid + 10 s).
CREATE TABLE nexmark_q11 (
    bidder       BIGINT,
    bid_count    BIGINT,
    window_start TIMESTAMP(3),
    window_end   TIMESTAMP(3)
) WITH (connector = 'blackhole');

INSERT INTO nexmark_q11
SELECT bidder, count(*) AS bid_count, window_start, window_end
FROM session(bid, descriptor(date_time), INTERVAL '10' SECOND, descriptor(bidder))
GROUP BY bidder, window_start, window_end;
