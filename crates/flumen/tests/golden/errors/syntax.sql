CREATE TABLE t (a BIGINT) WITH (connector = 'blackhole');
SELECT a
  FROM t WHERE;
