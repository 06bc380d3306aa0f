-- q3: people in Oregon, Idaho or California who sell in category 10, with
-- the auction id. A regular join: both sides are kept (unbounded state
-- unless SET state_ttl bounds it); the result is append-only.
CREATE TABLE nexmark_q3 (
    name  VARCHAR,
    city  VARCHAR,
    state VARCHAR,
    id    BIGINT
) WITH (connector = 'blackhole');

INSERT INTO nexmark_q3
SELECT P.name, P.city, P.state, A.id
FROM auction AS A
JOIN person AS P ON A.seller = P.id
WHERE A.category = 10 AND (P.state = 'OR' OR P.state = 'ID' OR P.state = 'CA');
