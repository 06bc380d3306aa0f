-- Flink's dynamic table options set a table's options for one query; a
-- hint is a comment to the SQL parser, so it is refused, not dropped.
CREATE TABLE trades (id BIGINT, symbol VARCHAR)
WITH (connector = 'filesystem', path = '../data/trades.csv', format = 'csv');
SELECT id FROM trades /*+ OPTIONS('path' = 'other.csv') */;
