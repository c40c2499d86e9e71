-- Source items per source and licence: new pieces that parsed
-- (ok), items whose bytes were rejected (the first time or seen
-- again), and items whose bytes were an ok piece already in the
-- lake (duplicate); hours of music in the new pieces.
WITH p AS (
    SELECT
        source,
        coalesce(license, '(no licence)') AS license,
        status,
        coalesce(is_duplicate, false) AS dup,
        piece_id
    FROM pieces
)
SELECT
    p.source,
    p.license,
    count(*) FILTER (WHERE status = 'ok' AND NOT dup) AS ok,
    count(*) FILTER (WHERE status = 'rejected') AS rejected,
    count(*) FILTER (WHERE status = 'ok' AND dup) AS duplicate,
    coalesce(sum(f.duration_s) FILTER (WHERE NOT dup), 0) / 3600
        AS hours
FROM p
LEFT JOIN features f USING (piece_id)
GROUP BY ALL
ORDER BY ok + rejected + duplicate DESC, source, license
