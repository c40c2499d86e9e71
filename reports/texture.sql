-- Texture of the parsed pieces per source (the source that
-- first brought the bytes in), and over all sources (the row
-- whose source is NULL).
WITH origin AS (
    SELECT DISTINCT ON (piece_id) piece_id, source
    FROM pieces
    WHERE piece_id IS NOT NULL
    ORDER BY piece_id, coalesce(is_duplicate, false),
             ingested_at
),
f AS (
    SELECT coalesce(o.source, '(unknown)') AS source, f.texture
    FROM features f
    LEFT JOIN origin o USING (piece_id)
)
SELECT
    source,
    count(*) FILTER (WHERE texture = 'monophonic') AS monophonic,
    count(*) FILTER (WHERE texture = 'polyphonic') AS polyphonic,
    count(*) FILTER (WHERE texture = 'drums_only') AS drums_only,
    count(*) FILTER (WHERE texture IS NULL OR texture NOT IN
        ('monophonic', 'polyphonic', 'drums_only')) AS other,
    count(*) AS pieces
FROM f
GROUP BY GROUPING SETS ((), (source))
HAVING count(*) > 0
ORDER BY grouping(source) DESC, pieces DESC, source
