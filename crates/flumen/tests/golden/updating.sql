-- A GROUP BY without a window: an updating result, each row printed with its
-- operation (+I insert, -U/+U the old and new value of a changed group).
CREATE TABLE ticks (
    id     BIGINT,
    symbol VARCHAR,
    qty    BIGINT
) WITH (connector = 'filesystem', path = 'data/ticks', format = 'csv');

SELECT upper(symbol) AS symbol, count(*) AS trades, sum(qty) AS qty
FROM ticks
GROUP BY upper(symbol);
