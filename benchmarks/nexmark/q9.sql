-- q9: the winning bid of each auction: the highest bid placed while it was
-- open, the earliest winning a tie. An interval join (auctions freed once
-- the watermark passes their expiry), then a TopN of one row per auction,
-- which updates as higher bids arrive.
CREATE TABLE nexmark_q9 (
    id            BIGINT,
    item_name     VARCHAR,
    description   VARCHAR,
    initial_bid   BIGINT,
    reserve       BIGINT,
    date_time     TIMESTAMP(3),
    expires       TIMESTAMP(3),
    seller        BIGINT,
    category      BIGINT,
    extra         VARCHAR,
    auction       BIGINT,
    bidder        BIGINT,
    price         BIGINT,
    bid_date_time TIMESTAMP(3)
) WITH (connector = 'blackhole');

INSERT INTO nexmark_q9
SELECT id, item_name, description, initial_bid, reserve, date_time, expires, seller, category, extra,
       auction, bidder, price, bid_date_time
FROM (
    SELECT A.id, A.item_name, A.description, A.initial_bid, A.reserve, A.date_time, A.expires,
           A.seller, A.category, A.extra,
           B.auction, B.bidder, B.price, B.date_time AS bid_date_time,
           ROW_NUMBER() OVER (PARTITION BY A.id ORDER BY B.price DESC, B.date_time ASC) AS rownum
    FROM auction AS A
    JOIN bid AS B ON A.id = B.auction
    WHERE B.date_time BETWEEN A.date_time AND A.expires
)
WHERE rownum <= 1;
