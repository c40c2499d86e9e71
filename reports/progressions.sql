-- The most common progressions: each curated piece's most
-- frequent run of 4 chord degrees in its key
-- (features.chord_progression), counted over pieces; the
-- top 20.
SELECT
    chord_progression AS progression,
    count(*) AS pieces
FROM features
WHERE chord_progression IS NOT NULL
GROUP BY chord_progression
ORDER BY pieces DESC, progression
LIMIT 20
