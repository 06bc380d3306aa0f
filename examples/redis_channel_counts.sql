-- Bids and top price per channel, kept up to date in Redis hashes
-- (`channel:<name>` with fields bids and top): an updating result
-- applied as upserts by key. Against the Redis of the tests:
--   scripts/services.sh redis
--   cargo run --release -p flumen -- run examples/redis_channel_counts.sql
--   redis-cli -p 16379 -a flumen-test-secret HGETALL channel:Google

CREATE TABLE bid (
    auction   BIGINT,
    bidder    BIGINT,
    price     BIGINT,
    channel   VARCHAR,
    date_time TIMESTAMP(3)
) WITH (connector = 'nexmark', kind = 'bid', events = '1000000', rate = '100000');

CREATE TABLE channel_counts (
    channel VARCHAR,
    bids    BIGINT,
    top     BIGINT,
    PRIMARY KEY (channel) NOT ENFORCED
) WITH (connector = 'redis', url = 'redis://:flumen-test-secret@127.0.0.1:16379',
        'data-type' = 'hash', 'key.prefix' = 'channel:');

INSERT INTO channel_counts
SELECT channel, count(*), max(price) FROM bid GROUP BY channel;
