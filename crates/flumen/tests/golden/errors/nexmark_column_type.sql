-- The generator's bid ids are BIGINT; read as a timestamp they would turn
-- into dates in 1970, so the table is refused where it declares the column.
CREATE TABLE bid (
    price     BIGINT,
    auction   TIMESTAMP(3)
) WITH (connector = 'nexmark', kind = 'bid', events = '1000');
SELECT price FROM bid;
