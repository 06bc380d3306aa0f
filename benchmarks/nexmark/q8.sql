-- q8: people who registered and opened an auction in the same 10-second
-- tumbling window of event time. Each side is first reduced to one row per
-- person (seller) and window; the window join frees a window's rows once
-- the watermark passes its end.
CREATE TABLE nexmark_q8 (
    id           BIGINT,
    name         VARCHAR,
    window_start TIMESTAMP(3)
) WITH (connector = 'blackhole');

INSERT INTO nexmark_q8
SELECT P.id, P.name, P.window_start
FROM (
    SELECT id, name, window_start
    FROM tumble(person, descriptor(date_time), INTERVAL '10' SECOND)
    GROUP BY id, name, window_start, window_end
) AS P
JOIN (
    SELECT seller, window_start
    FROM tumble(auction, descriptor(date_time), INTERVAL '10' SECOND)
    GROUP BY seller, window_start, window_end
) AS A
ON P.id = A.seller AND P.window_start = A.window_start;
