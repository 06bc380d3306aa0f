-- INSERT INTO a stdout table printing JSON lines, from a CSV file without a header.
CREATE TABLE quotes (
    id     BIGINT,
    symbol VARCHAR,
    price  DOUBLE
) WITH (connector = 'filesystem', path = 'data/no_header.csv', format = 'csv', header = 'false');

CREATE TABLE printed (
    id     BIGINT,
    symbol VARCHAR,
    cents  BIGINT
) WITH (connector = 'stdout', format = 'json');

INSERT INTO printed
SELECT id, lower(symbol), CAST(price * 100 AS BIGINT) FROM quotes;
