-- Track roles (curate, rule roles-v1 of corpus.curation.roles)
-- per source (the source that first brought the bytes in), and
-- over all sources (the row whose source is NULL): tracks with
-- notes per role.
WITH origin AS (
    SELECT DISTINCT ON (piece_id) piece_id, source
    FROM pieces
    WHERE piece_id IS NOT NULL
    ORDER BY piece_id, coalesce(is_duplicate, false),
             ingested_at
),
t AS (
    SELECT coalesce(o.source, '(unknown)') AS source, t.role
    FROM tracks t
    LEFT JOIN origin o USING (piece_id)
    WHERE t.n_notes > 0
)
SELECT
    source,
    count(*) FILTER (WHERE role = 'melody') AS melody,
    count(*) FILTER (WHERE role = 'bass') AS bass,
    count(*) FILTER (WHERE role = 'chords') AS chords,
    count(*) FILTER (WHERE role = 'drums') AS drums,
    count(*) FILTER (WHERE role = 'other') AS other,
    count(*) FILTER (WHERE role IS NULL) AS undecided,
    count(*) AS tracks
FROM t
GROUP BY GROUPING SETS ((), (source))
HAVING count(*) > 0
ORDER BY grouping(source) DESC, tracks DESC, source
