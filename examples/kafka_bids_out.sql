-- Writes the generator's bids as JSON messages to the Kafka topic `bids`
-- (keyed by auction), the input of examples/kafka_to_postgres.sql.
--   scripts/services.sh kafka
--   /var/lib/flumen/tools/bin/tansu topic create bids --broker tcp://127.0.0.1:19092
--   cargo run --release -p flumen -- run examples/kafka_bids_out.sql

CREATE TABLE bid (
    auction   BIGINT,
    bidder    BIGINT,
    price     BIGINT,
    channel   VARCHAR,
    date_time TIMESTAMP(3)
) WITH (connector = 'nexmark', kind = 'bid', events = '2000000', rate = '100000', seed = '7');

CREATE TABLE bids (
    auction   BIGINT,
    bidder    BIGINT,
    price     BIGINT,
    channel   VARCHAR,
    date_time TIMESTAMP(3)
) WITH (connector = 'kafka', topic = 'bids', 'properties.bootstrap.servers' = '127.0.0.1:19092',
        format = 'json', 'key.fields' = 'auction');

INSERT INTO bids SELECT * FROM bid;
