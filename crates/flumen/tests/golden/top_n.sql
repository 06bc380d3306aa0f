-- The two largest trades of all (a TopN without PARTITION BY): it updates
-- as bigger trades arrive.
CREATE TABLE ticks (
    id     BIGINT,
    symbol VARCHAR,
    qty    BIGINT
) WITH (connector = 'filesystem', path = 'data/ticks', format = 'csv');

SELECT id, qty, rn
FROM (SELECT id, qty, ROW_NUMBER() OVER (ORDER BY qty DESC) AS rn FROM ticks)
WHERE rn <= 2;
