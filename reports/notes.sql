-- Notes per piece (all tracks, drums included), log-spaced
-- bins (4 per decade).
WITH b AS (
    SELECT floor(log10(n_notes) * 4) AS bin
    FROM features
    WHERE n_notes > 0
)
SELECT
    pow(10, bin / 4) AS lo,
    pow(10, (bin + 1) / 4) AS hi,
    count(*) AS pieces
FROM b
GROUP BY bin
ORDER BY bin
