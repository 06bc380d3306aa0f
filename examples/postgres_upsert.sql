-- Bids per channel and 10-second window appended to PostgreSQL, and each
-- channel's running totals upserted by key, exactly once with checkpoints.
-- Start the server and make the tables, then run (as in the README):
--   scripts/services.sh postgres
--   psql postgres://flumen@127.0.0.1:54329/flumen -c "
--     CREATE TABLE IF NOT EXISTS channel_windows (channel text, bids bigint, top bigint, window_end timestamp);
--     CREATE TABLE IF NOT EXISTS channel_totals (channel text PRIMARY KEY, bids bigint, top bigint);"
--   cargo run --release -p flumen -- run examples/postgres_upsert.sql --checkpoint-dir /tmp/flumen-pg-example
-- Kill it (SIGKILL) and run the same command again: it resumes from its
-- last checkpoint and neither table gets a row twice.

CREATE TABLE bid (
    auction   BIGINT,
    price     BIGINT,
    channel   VARCHAR,
    date_time TIMESTAMP(3),
    WATERMARK FOR date_time AS date_time - INTERVAL '2' SECOND
) WITH (connector = 'nexmark', kind = 'bid', events = '5000000', rate = '100000',
        seed = '7', rows_per_second = '200000');

CREATE TABLE channel_windows (channel VARCHAR, bids BIGINT, top BIGINT, window_end TIMESTAMP(3))
WITH (connector = 'postgres', url = 'postgres://flumen@127.0.0.1:54329/flumen',
      'table-name' = 'channel_windows');

CREATE TABLE channel_totals (
    channel VARCHAR,
    bids    BIGINT,
    top     BIGINT,
    PRIMARY KEY (channel) NOT ENFORCED
) WITH (connector = 'postgres', url = 'postgres://flumen@127.0.0.1:54329/flumen',
        'table-name' = 'channel_totals');

INSERT INTO channel_windows
SELECT channel, count(*), max(price), window_end
FROM tumble(bid, descriptor(date_time), INTERVAL '10' SECOND)
WHERE channel IN ('Apple', 'Google', 'Facebook', 'Baidu')
GROUP BY channel, window_start, window_end;

INSERT INTO channel_totals
SELECT channel, count(*), max(price) FROM bid GROUP BY channel;
