CREATE TABLE bid (auction BIGINT, price BIGINT) WITH (connector = 'nexmark', kind = 'bid', events = '100');
CREATE TABLE fine (auction BIGINT, price BIGINT) WITH (connector = 'blackhole');
CREATE TABLE shares (auction BIGINT, share BIGINT) WITH (connector = 'blackhole');
INSERT INTO fine SELECT auction, price FROM bid;

INSERT INTO shares
SELECT auction, price / (auction - auction) FROM bid;
