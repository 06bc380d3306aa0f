-- A CDC topic applied to a PostgreSQL table: each Debezium event of
-- `channel_changes` (examples/channel_changes_out.sql writes them; a
-- Debezium connector capturing a database writes the same shape) inserts,
-- updates or deletes its row by primary key, exactly once with checkpoints.
--   scripts/services.sh                       (PostgreSQL and tansu)
--   psql postgres://flumen@127.0.0.1:54329/flumen -c "
--     CREATE TABLE IF NOT EXISTS channel_totals (channel text PRIMARY KEY, bids bigint, top bigint);"
--   cargo run --release -p flumen -- run examples/debezium_to_postgres.sql --checkpoint-dir /tmp/flumen-cdc-example

CREATE TABLE channel_changes (
    channel VARCHAR NOT NULL,
    bids    BIGINT,
    top     BIGINT
) WITH (connector = 'kafka', topic = 'channel_changes',
        'properties.bootstrap.servers' = '127.0.0.1:19092',
        format = 'debezium-json', 'scan.startup.mode' = 'earliest-offset',
        'scan.bounded.mode' = 'latest-offset');

CREATE TABLE channel_totals (
    channel VARCHAR NOT NULL,
    bids    BIGINT,
    top     BIGINT,
    PRIMARY KEY (channel) NOT ENFORCED
) WITH (connector = 'postgres', url = 'postgres://flumen@127.0.0.1:54329/flumen',
        'table-name' = 'channel_totals');

INSERT INTO channel_totals SELECT * FROM channel_changes;
