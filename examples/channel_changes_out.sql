-- An updating result written as Debezium change events: bids and the top
-- price per channel, kept up to date as bids arrive, to the Kafka topic
-- `channel_changes` (keyed by channel, so one channel's events stay in
-- order). The input of examples/debezium_to_postgres.sql.
--   scripts/services.sh kafka
--   /var/lib/flumen/tools/bin/tansu topic create channel_changes --broker tcp://127.0.0.1:19092
--   cargo run --release -p flumen -- run examples/channel_changes_out.sql

CREATE TABLE bid (
    auction   BIGINT,
    bidder    BIGINT,
    price     BIGINT,
    channel   VARCHAR,
    date_time TIMESTAMP(3)
) WITH (connector = 'nexmark', kind = 'bid', events = '200000');

CREATE TABLE channel_changes (
    channel VARCHAR,
    bids    BIGINT,
    top     BIGINT
) WITH (connector = 'kafka', topic = 'channel_changes',
        'properties.bootstrap.servers' = '127.0.0.1:19092',
        format = 'debezium-json', 'key.fields' = 'channel', 'key.format' = 'json');

INSERT INTO channel_changes
SELECT channel, count(*), max(price) FROM bid GROUP BY channel;
