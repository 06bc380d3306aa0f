-- skew_channel_running: running bids per channel, with no window: an
-- updating result, one row per channel changed as bids arrive. The same
-- skew as skew_channel (four hot channels hold half the bids), for
-- two-phase aggregation of a non-windowed GROUP BY.
CREATE TABLE skew_channel_running (
    channel VARCHAR,
    bids    BIGINT,
    total   BIGINT,
    highest BIGINT
) WITH (connector = 'blackhole');

INSERT INTO skew_channel_running
SELECT channel, count(*), sum(price), max(price)
FROM bid
GROUP BY channel;
