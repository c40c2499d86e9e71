-- Song groups (rule song-v1, latest curate run): groups of each
-- size and the pieces they hold, and the share of pieces that
-- share their song with another piece. Sizes above 4 are grouped
-- by powers of two (5-8, 9-16, ...).
WITH sizes AS (
    SELECT song_group, count(*) AS size
    FROM features
    GROUP BY song_group
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
    sum(size) AS pieces,
    round(100.0 * sum(size) / (SELECT sum(size) FROM sizes), 1) AS pct_pieces,
    round(100.0 * (SELECT sum(size) FILTER (WHERE size > 1) FROM sizes)
          / (SELECT sum(size) FROM sizes), 1) AS pct_in_groups_of_2_plus
FROM b
GROUP BY lo, hi
ORDER BY lo
