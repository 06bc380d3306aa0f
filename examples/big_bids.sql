-- The biggest bids of a small Nexmark auction stream, printed as a table.
-- Run: cargo run --release -p flumen -- run examples/big_bids.sql

CREATE TABLE bid (
    auction   BIGINT,
    bidder    BIGINT,
    price     BIGINT,
    channel   VARCHAR,
    url       VARCHAR,
    date_time TIMESTAMP(3),
    extra     VARCHAR
) WITH (connector = 'nexmark', kind = 'bid', events = '200000', seed = '7');

-- Bids worth more than 90 million euros, with the hour they were placed.
SELECT
    auction,
    bidder,
    round(0.908 * price) AS euros,
    upper(channel)       AS channel,
    date_part('hour', date_time) AS hour
FROM bid
WHERE 0.908 * price > 90000000;
