-- Piece duration in seconds, log-spaced bins (4 per decade).
WITH b AS (
    SELECT floor(log10(duration_s) * 4) AS bin
    FROM features
    WHERE duration_s > 0
)
SELECT
    pow(10, bin / 4) AS lo,
    pow(10, (bin + 1) / 4) AS hi,
    count(*) AS pieces
FROM b
GROUP BY bin
ORDER BY bin
