-- A LEFT JOIN of two files: a tick whose company is not listed stays, padded
-- with NULL. Which file arrives first varies, so a tick may first print
-- padded (+I) and then be taken back (-D) when its company arrives; the rows
-- the output ends with are always the same.
-- golden: final rows
CREATE TABLE ticks (
    id     BIGINT,
    symbol VARCHAR,
    qty    BIGINT
) WITH (connector = 'filesystem', path = 'data/ticks', format = 'csv');

CREATE TABLE companies (
    symbol VARCHAR,
    name   VARCHAR
) WITH (connector = 'filesystem', path = 'data/companies.csv', format = 'csv');

SELECT t.id, upper(t.symbol) AS symbol, c.name
FROM ticks AS t
LEFT JOIN companies AS c ON upper(t.symbol) = c.symbol;
