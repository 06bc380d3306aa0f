-- q16: q15 per channel and day.
-- The day is a one-day tumbling window of event time, so each day's row is
-- emitted once, when the watermark passes midnight (Flink's q16 keeps an
-- updating row per day instead; for a bounded input both end with the same rows).
CREATE TABLE nexmark_q16 (
    channel        VARCHAR,
    day            VARCHAR,
    total_bids     BIGINT,
    rank1_bids     BIGINT,
    rank2_bids     BIGINT,
    rank3_bids     BIGINT,
    total_bidders  BIGINT,
    rank1_bidders  BIGINT,
    rank2_bidders  BIGINT,
    rank3_bidders  BIGINT,
    total_auctions BIGINT,
    rank1_auctions BIGINT,
    rank2_auctions BIGINT,
    rank3_auctions BIGINT
) WITH (connector = 'blackhole');

INSERT INTO nexmark_q16
SELECT
    channel,
    to_char(date_bin(INTERVAL '1' DAY, date_time), '%Y-%m-%d') AS day,
    count(*) AS total_bids,
    count(*) FILTER (WHERE price < 10000) AS rank1_bids,
    count(*) FILTER (WHERE price >= 10000 AND price < 1000000) AS rank2_bids,
    count(*) FILTER (WHERE price >= 1000000) AS rank3_bids,
    count(DISTINCT bidder) AS total_bidders,
    count(DISTINCT bidder) FILTER (WHERE price < 10000) AS rank1_bidders,
    count(DISTINCT bidder) FILTER (WHERE price >= 10000 AND price < 1000000) AS rank2_bidders,
    count(DISTINCT bidder) FILTER (WHERE price >= 1000000) AS rank3_bidders,
    count(DISTINCT auction) AS total_auctions,
    count(DISTINCT auction) FILTER (WHERE price < 10000) AS rank1_auctions,
    count(DISTINCT auction) FILTER (WHERE price >= 10000 AND price < 1000000) AS rank2_auctions,
    count(DISTINCT auction) FILTER (WHERE price >= 1000000) AS rank3_auctions
FROM bid
GROUP BY channel, date_bin(INTERVAL '1' DAY, date_time);
