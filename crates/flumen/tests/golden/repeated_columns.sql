-- A column selected twice, as Flink allows: each repeat is named as Flink
-- names it (symbol0, then qty1 since the query already names a qty0), and
-- a query over the result reads the repeats by those names.
CREATE TABLE trades (
    id     BIGINT,
    symbol VARCHAR,
    price  DOUBLE,
    qty    BIGINT,
    ts     TIMESTAMP(3)
) WITH (connector = 'filesystem', path = 'data/trades.csv', format = 'csv');

SELECT id, symbol0, qty0, qty1
FROM (
    SELECT id, symbol, qty, trades.symbol, qty * 2 AS qty0, qty
    FROM trades
    WHERE qty >= 10
);
