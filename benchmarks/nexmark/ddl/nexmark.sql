-- The three Nexmark tables over flumen's generator (see NEXMARK.md).
-- Every query file (qN.sql) reads only these tables, so a file declaring the
-- same three tables over Parquet files runs the same queries over them.
-- `flumen run --set events=N` (or rate, seed) overrides the options below.
-- Event time is `date_time`; watermarks trail it by 4 seconds (NEXMARK.md).
-- Person and auction ids are unique, as the generator makes them: declared
-- (NOT ENFORCED, as in Flink) so that state keyed by them can be freed.

CREATE TABLE person (
    id            BIGINT,
    name          VARCHAR,
    email_address VARCHAR,
    credit_card   VARCHAR,
    city          VARCHAR,
    state         VARCHAR,
    date_time     TIMESTAMP(3),
    extra         VARCHAR,
    PRIMARY KEY (id) NOT ENFORCED,
    WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND
) WITH (connector = 'nexmark', kind = 'person', events = '10000000', rate = '10000000', seed = '42');

CREATE TABLE auction (
    id          BIGINT,
    item_name   VARCHAR,
    description VARCHAR,
    initial_bid BIGINT,
    reserve     BIGINT,
    date_time   TIMESTAMP(3),
    expires     TIMESTAMP(3),
    seller      BIGINT,
    category    BIGINT,
    extra       VARCHAR,
    PRIMARY KEY (id) NOT ENFORCED,
    WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND
) WITH (connector = 'nexmark', kind = 'auction', events = '10000000', rate = '10000000', seed = '42');

CREATE TABLE bid (
    auction   BIGINT,
    bidder    BIGINT,
    price     BIGINT,
    channel   VARCHAR,
    url       VARCHAR,
    date_time TIMESTAMP(3),
    extra     VARCHAR,
    WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND
) WITH (connector = 'nexmark', kind = 'bid', events = '10000000', rate = '10000000', seed = '42');
