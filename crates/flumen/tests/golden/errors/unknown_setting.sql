CREATE TABLE bid (auction BIGINT) WITH (connector = 'nexmark', kind = 'bid', events = '10');
SELECT auction FROM bid;

  SET state_tll = '1 h';
