-- The first tempo of each piece in 10 bpm bins (120 bpm when
-- the file declares none; tempos above 400 bpm in the last bin).
WITH b AS (
    SELECT floor(least(tempo_bpm, 400) / 10) * 10 AS lo
    FROM features
    WHERE tempo_bpm > 0
)
SELECT lo, lo + 10 AS hi, count(*) AS pieces
FROM b
GROUP BY lo
ORDER BY lo
