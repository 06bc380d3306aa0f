-- An aggregate over an updating result: each -U of the inner GROUP BY takes
-- its row back from the outer count.
CREATE TABLE ticks (
    id     BIGINT,
    symbol VARCHAR,
    qty    BIGINT
) WITH (connector = 'filesystem', path = 'data/ticks', format = 'csv');

SELECT trades, count(*) AS symbols
FROM (SELECT upper(symbol) AS symbol, count(*) AS trades FROM ticks GROUP BY upper(symbol))
GROUP BY trades;
