-- Token sequence lengths per scheme (one sequence per track
-- when the scheme has no single stream), log-spaced bins
-- (4 per decade).
WITH b AS (
    SELECT scheme, floor(log10(len) * 4) AS bin
    FROM tokens, unnest(seq_lengths) AS s(len)
    WHERE len > 0
)
SELECT
    scheme,
    pow(10, bin / 4) AS lo,
    pow(10, (bin + 1) / 4) AS hi,
    count(*) AS sequences
FROM b
GROUP BY scheme, bin
ORDER BY scheme, bin
