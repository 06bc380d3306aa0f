-- q21: the channel id of each bid: fixed for the four hot channels, else
-- parsed from the `channel_id` parameter of its URL (Flink's REGEXP_EXTRACT).
CREATE TABLE nexmark_q21 (
    auction    BIGINT,
    bidder     BIGINT,
    price      BIGINT,
    channel    VARCHAR,
    channel_id VARCHAR
) WITH (connector = 'blackhole');

INSERT INTO nexmark_q21
SELECT
    auction,
    bidder,
    price,
    channel,
    CASE
        WHEN lower(channel) = 'apple' THEN '0'
        WHEN lower(channel) = 'google' THEN '1'
        WHEN lower(channel) = 'facebook' THEN '2'
        WHEN lower(channel) = 'baidu' THEN '3'
        ELSE regexp_extract(url, '(&|^)channel_id=([^&]*)', 2)
    END AS channel_id
FROM bid
WHERE regexp_extract(url, '(&|^)channel_id=([^&]*)', 2) IS NOT NULL
   OR lower(channel) IN ('apple', 'google', 'facebook', 'baidu');
