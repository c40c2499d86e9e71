-- Near-duplicate cluster sizes (latest curate run): clusters of
-- each size and the pieces they hold. Sizes above 4 are grouped
-- by powers of two (5-8, 9-16, ...).
WITH sizes AS (
    SELECT dedup_cluster, count(*) AS size
    FROM features
    GROUP BY dedup_cluster
),
b AS (
    SELECT size,
           CASE WHEN size <= 4 THEN 0
                ELSE ceil(log2(size))::INT END AS e
    FROM sizes
)
SELECT
    CASE WHEN e = 0 THEN size ELSE (1 << (e - 1)) + 1 END AS lo,
    CASE WHEN e = 0 THEN size ELSE 1 << e END AS hi,
    count(*) AS clusters,
    sum(size) AS pieces
FROM b
GROUP BY lo, hi
ORDER BY lo
