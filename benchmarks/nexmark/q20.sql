-- q20: bids joined with their auction, for auctions in category 10; the
-- auction's columns whose names clash with the bid's are prefixed auction_.
-- A regular join (unbounded state unless SET state_ttl bounds it).
CREATE TABLE nexmark_q20 (
    auction           BIGINT,
    bidder            BIGINT,
    price             BIGINT,
    channel           VARCHAR,
    url               VARCHAR,
    date_time         TIMESTAMP(3),
    extra             VARCHAR,
    item_name         VARCHAR,
    description       VARCHAR,
    initial_bid       BIGINT,
    reserve           BIGINT,
    auction_date_time TIMESTAMP(3),
    expires           TIMESTAMP(3),
    seller            BIGINT,
    category          BIGINT,
    auction_extra     VARCHAR
) WITH (connector = 'blackhole');

INSERT INTO nexmark_q20
SELECT
    B.auction, B.bidder, B.price, B.channel, B.url, B.date_time, B.extra,
    A.item_name, A.description, A.initial_bid, A.reserve, A.date_time AS auction_date_time,
    A.expires, A.seller, A.category, A.extra AS auction_extra
FROM bid AS B
JOIN auction AS A ON B.auction = A.id
WHERE A.category = 10;
