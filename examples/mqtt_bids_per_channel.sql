-- Bids per channel and 10-second window, published as JSON messages to an
-- MQTT topic at QoS 1 (at least once). Against the Mosquitto of the tests:
--   scripts/services.sh mqtt
--   cargo run --release -p flumen -- run examples/mqtt_bids_per_channel.sql
-- A subscriber sees one message per channel and window, for example with
-- mosquitto_sub (Debian's mosquitto-clients):
--   mosquitto_sub -p 11883 -u flumen -P flumen-test-secret -t flumen/bids-per-channel

CREATE TABLE bid (
    auction   BIGINT,
    bidder    BIGINT,
    price     BIGINT,
    channel   VARCHAR,
    date_time TIMESTAMP(3),
    WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND
) WITH (connector = 'nexmark', kind = 'bid', events = '1000000', rate = '100000');

CREATE TABLE bids_per_channel (
    channel      VARCHAR,
    bids         BIGINT,
    window_start TIMESTAMP(3)
) WITH (connector = 'mqtt', url = 'tcp://127.0.0.1:11883', topic = 'flumen/bids-per-channel',
        username = 'flumen', password = 'flumen-test-secret', qos = '1');

INSERT INTO bids_per_channel
SELECT channel, count(*), window_start
FROM tumble(bid, descriptor(date_time), INTERVAL '10' SECOND)
GROUP BY channel, window_start, window_end;
