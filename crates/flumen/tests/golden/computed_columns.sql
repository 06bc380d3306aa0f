-- Computed columns, as in Flink: `notional` from two columns, and the
-- trade's day from its time; SELECT * shows them where they are declared.
CREATE TABLE trades (
    id       BIGINT,
    symbol   VARCHAR,
    price    DOUBLE,
    qty      BIGINT,
    notional AS price * qty,
    ts       TIMESTAMP(3),
    day      AS date_trunc('day', ts)
) WITH (connector = 'filesystem', path = 'data/trades.csv', format = 'csv');

SELECT * FROM trades WHERE notional > 1000;
