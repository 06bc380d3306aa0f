-- q4: average closing price per category. An auction's closing price is its
-- highest bid placed while it was open (an interval join: the join frees an
-- auction once the watermark passes its expiry, and a bid once it passes the
-- bid's time). Both aggregations update as bids arrive: the result is an
-- updating stream (the outer AVG takes back each auction's old maximum).
CREATE TABLE nexmark_q4 (
    category  BIGINT,
    avg_price DOUBLE
) WITH (connector = 'blackhole');

INSERT INTO nexmark_q4
SELECT Q.category, avg(Q.final) AS avg_price
FROM (
    SELECT max(B.price) AS final, A.category
    FROM auction AS A
    JOIN bid AS B ON A.id = B.auction
    WHERE B.date_time BETWEEN A.date_time AND A.expires
    GROUP BY A.id, A.category
) AS Q
GROUP BY Q.category;
