-- Flink's statement set: its INSERTs run as one job, as every INSERT of a
-- script does; IF(condition, then, else) is Flink's conditional.
-- golden: final rows (the two INSERTs print in either order)
CREATE TABLE trades (
    id     BIGINT,
    symbol VARCHAR,
    price  DOUBLE,
    qty    BIGINT,
    ts     TIMESTAMP(3)
) WITH (connector = 'filesystem', path = 'data/trades.csv', format = 'csv');

CREATE TABLE sizes (
    id   BIGINT,
    size VARCHAR
) WITH (connector = 'stdout', format = 'json');

EXECUTE STATEMENT SET
BEGIN
    INSERT INTO sizes SELECT id, IF(qty >= 100, 'large', IF(qty > 0, 'small', 'none')) FROM trades WHERE id <= 3;
    INSERT INTO sizes SELECT id, IF(price IS NULL, 'unpriced', 'priced') FROM trades WHERE id > 3;
END;
