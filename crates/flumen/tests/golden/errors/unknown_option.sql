CREATE TABLE t (a BIGINT)
WITH (connector = 'filesystem', path = 'x', format = 'csv', headers = 'false');
SELECT a FROM t;
