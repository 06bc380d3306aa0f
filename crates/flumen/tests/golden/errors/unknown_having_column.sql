CREATE TABLE bid (auction BIGINT, price BIGINT) WITH (connector = 'nexmark', kind = 'bid', events = '10');
SELECT auction, max(price)
FROM bid
GROUP BY auction
HAVING max(pricee) > 10;
