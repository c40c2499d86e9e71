-- Performed or quantized (curate, rule nomml-v1 of
-- corpus.curation.expressive) per source (the source that
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
    SELECT coalesce(o.source, '(unknown)') AS source, f.expressive
    FROM features f
    LEFT JOIN origin o USING (piece_id)
)
SELECT
    source,
    count(*) FILTER (WHERE expressive = 'expressive') AS expressive,
    count(*) FILTER (WHERE expressive = 'quantized') AS quantized,
    count(*) FILTER (WHERE expressive IS NULL) AS undecided,
    count(*) AS pieces
FROM f
GROUP BY GROUPING SETS ((), (source))
HAVING count(*) > 0
ORDER BY grouping(source) DESC, pieces DESC, source
