-- Generator bids published as JSON to the NATS subject `bids.nexmark`,
-- captured by the JetStream stream BIDS (made when missing), for
-- examples/nats_to_kafka.sql to read.
--   scripts/services.sh nats kafka
--   cargo run --release -p flumen -- run examples/nats_bids_out.sql

CREATE TABLE bid (
    auction   BIGINT,
    bidder    BIGINT,
    price     BIGINT,
    channel   VARCHAR,
    date_time TIMESTAMP(3)
) WITH (connector = 'nexmark', kind = 'bid', events = '1000000', rate = '100000');

CREATE TABLE bids_subject (
    auction   BIGINT,
    bidder    BIGINT,
    price     BIGINT,
    channel   VARCHAR,
    date_time TIMESTAMP(3)
) WITH (connector = 'nats', servers = 'nats://127.0.0.1:14222', subject = 'bids.nexmark',
        stream = 'BIDS', format = 'json');

INSERT INTO bids_subject SELECT * FROM bid;
