-- skew_channel: bids per channel in 10-second tumbling windows. Half of all
-- bids go to four hot channels (Google, Facebook, Baidu, Apple), the other
-- half spread over 10,000 ordinary ones, so a hash exchange on the channel
-- sends a large share of the rows to whichever subtasks own the hot four:
-- the case two-phase (local-global) aggregation is for.
CREATE TABLE skew_channel (
    channel      VARCHAR,
    bids         BIGINT,
    total        BIGINT,
    highest      BIGINT,
    window_start TIMESTAMP(3),
    window_end   TIMESTAMP(3)
) WITH (connector = 'blackhole');

INSERT INTO skew_channel
SELECT channel, count(*), sum(price), max(price), window_start, window_end
FROM tumble(bid, descriptor(date_time), INTERVAL '10' SECOND)
GROUP BY channel, window_start, window_end;
