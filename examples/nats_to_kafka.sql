-- NATS JetStream in, a 10-second window per auction, Kafka out, with
-- checkpoints: the source's stream sequences are in each checkpoint and
-- its messages are acknowledged when a checkpoint completes.
--   scripts/services.sh nats kafka
--   cargo run --release -p flumen -- run examples/nats_bids_out.sql
--   /var/lib/flumen/tools/bin/tansu topic create auction_windows --broker tcp://127.0.0.1:19092
--   cargo run --release -p flumen -- run examples/nats_to_kafka.sql --checkpoint-dir /tmp/flumen-nats-example
-- Kill it (SIGKILL) and run the same command again: it resumes at the
-- checkpointed sequences. The topic is written at least once (tansu, the
-- test broker, has no transactions; on a Kafka broker set
-- 'sink.delivery-guarantee' = 'exactly-once').

CREATE TABLE bids (
    auction   BIGINT,
    price     BIGINT,
    date_time TIMESTAMP(3),
    WATERMARK FOR date_time AS date_time - INTERVAL '2' SECOND
) WITH (connector = 'nats', servers = 'nats://127.0.0.1:14222', stream = 'BIDS',
        format = 'json', 'scan.startup.mode' = 'earliest', 'scan.bounded.mode' = 'latest',
        rows_per_second = '200000');

CREATE TABLE auction_windows (
    auction    BIGINT,
    window_end TIMESTAMP(3),
    bids       BIGINT,
    top        BIGINT
) WITH (connector = 'kafka', topic = 'auction_windows',
        'properties.bootstrap.servers' = '127.0.0.1:19092', format = 'json',
        'key.fields' = 'auction');

INSERT INTO auction_windows
SELECT auction, window_end, count(*), max(price)
FROM tumble(bids, descriptor(date_time), INTERVAL '10' SECOND)
GROUP BY auction, window_start, window_end;
