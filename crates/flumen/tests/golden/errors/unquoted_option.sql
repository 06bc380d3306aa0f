CREATE TABLE t (a BIGINT)
WITH (connector = 'filesystem', path = 'in', format = 'json',
      bad_data = 'dead_letter', dead_letter.path = 'dead');
SELECT a FROM t;
