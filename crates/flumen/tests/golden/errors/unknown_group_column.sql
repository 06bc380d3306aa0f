CREATE TABLE bid (auction BIGINT, price BIGINT) WITH (connector = 'nexmark', kind = 'bid', events = '10');
SELECT auction, count(*)
FROM bid AS b
GROUP BY b.auction, pricex;
