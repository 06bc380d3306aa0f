-- Scalar expressions over a CSV file: casts, CASE, string, regex and date functions.
CREATE TABLE trades (
    id     BIGINT,
    symbol VARCHAR,
    price  DOUBLE,
    qty    BIGINT,
    ts     TIMESTAMP(3)
) WITH (connector = 'filesystem', path = 'data/trades.csv', format = 'csv');

SELECT
    id,
    upper(symbol) AS symbol,
    price * qty AS notional,
    CASE WHEN qty = 0 THEN 'none' WHEN qty < 50 THEN 'small' ELSE 'large' END AS size,
    coalesce(cast(price AS VARCHAR), 'n/a') AS price_text,
    regexp_like(symbol, '^[a-z]+$') AS lower_case,
    date_part('hour', ts) AS hour,
    to_char(ts, '%Y-%m-%d') AS day,
    length(symbol) + id AS n
FROM trades
WHERE id <> 3;
