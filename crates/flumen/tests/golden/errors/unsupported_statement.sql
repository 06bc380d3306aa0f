CREATE TABLE bid (auction BIGINT) WITH (connector = 'nexmark', kind = 'bid', events = '10');

  DROP TABLE bid;
