-- q10: every bid logged to files partitioned by its date and hour
-- (Hive-style directories dt=YYYY-MM-DD/hour=HH under `path`), as a
-- log-to-filesystem job does. `path` may be an s3:// URL (with the
-- filesystem connector's s3.* options).
CREATE TABLE nexmark_q10 (
    auction   BIGINT,
    bidder    BIGINT,
    price     BIGINT,
    date_time TIMESTAMP(3),
    extra     VARCHAR,
    dt        VARCHAR,
    hour      VARCHAR
) WITH (
    connector = 'filesystem',
    path = 'nexmark_q10',
    format = 'parquet',
    partition_by = 'dt, hour'
);

INSERT INTO nexmark_q10
SELECT auction, bidder, price, date_time, extra,
       to_char(date_time, '%Y-%m-%d') AS dt,
       to_char(date_time, '%H') AS hour
FROM bid;
