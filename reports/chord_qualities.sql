-- Chord qualities (curate, rule chords-v1 of
-- corpus.curation.chords): beats labelled with each quality
-- over all curated pieces, and the pieces where it occurs;
-- N is a beat with no chord (silence, a single line).
SELECT
    quality,
    sum(n_beats) AS beats,
    count(DISTINCT piece_id) AS pieces
FROM chords
GROUP BY quality
ORDER BY beats DESC, quality
