-- A view over a file table, queried with a further filter.
CREATE TABLE trades (
    id     BIGINT,
    symbol VARCHAR,
    price  DOUBLE,
    qty    BIGINT,
    ts     TIMESTAMP(3)
) WITH (connector = 'filesystem', path = 'data/trades.csv', format = 'csv');

CREATE VIEW big_trades AS
SELECT id, upper(symbol) AS symbol, price * qty AS notional
FROM trades
WHERE qty >= 50;

SELECT symbol, notional FROM big_trades WHERE notional > 20000;
