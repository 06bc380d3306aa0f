-- Flink's CREATE TEMPORARY TABLE and VIEW: every table and view lives as
-- long as the job, so TEMPORARY changes nothing.
-- golden: final rows
CREATE TEMPORARY TABLE trades (
    id     BIGINT,
    symbol VARCHAR,
    price  DOUBLE,
    qty    BIGINT,
    ts     TIMESTAMP(3)
) WITH ('connector' = 'filesystem', 'path' = 'data/trades.csv', 'format' = 'csv');

CREATE TEMPORARY VIEW bought AS SELECT id, upper(symbol) AS symbol FROM trades WHERE qty > 0;

SELECT symbol, count(*) AS trades FROM bought GROUP BY symbol;
