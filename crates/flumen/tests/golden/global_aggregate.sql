-- An aggregate without GROUP BY: one running row for the whole input.
CREATE TABLE ticks (
    id     BIGINT,
    symbol VARCHAR,
    qty    BIGINT
) WITH (connector = 'filesystem', path = 'data/ticks', format = 'csv');

SELECT count(*) AS trades, sum(qty) AS qty, max(qty) AS largest FROM ticks;
