-- Flink's TIMESTAMP_LTZ(3) declares a timestamp in flumen's time zone, UTC,
-- and to_timestamp_ltz reads epoch seconds (precision 0) or milliseconds (3).
CREATE TABLE trades (
    id     BIGINT,
    symbol VARCHAR,
    price  DOUBLE,
    qty    BIGINT,
    ts     TIMESTAMP_LTZ(3)
) WITH (connector = 'filesystem', path = 'data/trades.csv', format = 'csv');

SELECT id, ts, to_timestamp_ltz(id * 86400, 0) AS day_n, to_timestamp_ltz(qty, 3) AS qty_ms
FROM trades
WHERE id <= 3;
