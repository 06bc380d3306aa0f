-- skew_channel_distinct: distinct bidders per channel, with no window: an
-- updating result. Four hot channels hold half the bids, so without a split
-- the subtask of a hot channel holds its distinct set alone; with
-- SET 'table.optimizer.distinct-agg.split.enabled' = 'true' (flumen bench
-- --set …) each channel's bidders are counted in buckets spread over the
-- subtasks and the counts summed.
CREATE TABLE skew_channel_distinct (
    channel VARCHAR,
    bids    BIGINT,
    bidders BIGINT
) WITH (connector = 'blackhole');

INSERT INTO skew_channel_distinct
SELECT channel, count(*), count(DISTINCT bidder)
FROM bid
GROUP BY channel;
