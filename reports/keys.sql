-- Estimated key of each parsed piece; tonic_pc is the tonic's
-- pitch class (C = 0). A NULL mode counts pieces without an
-- estimate (not curated yet, or no pitched notes).
SELECT
    key_mode AS mode,
    key_tonic_pc AS tonic_pc,
    any_value(key_tonic) AS tonic,
    count(*) AS pieces
FROM features
GROUP BY key_mode, key_tonic_pc
ORDER BY mode, tonic_pc
