-- A column the generator does not have is refused when the table is
-- declared, even if no query reads it.
CREATE TABLE bid (
    auction   BIGINT,
    bidder    BIGINT,
    seller    BIGINT
) WITH (connector = 'nexmark', kind = 'bid', events = '1000');
SELECT auction FROM bid;
