-- Tracks per General MIDI instrument family (program // 8);
-- drum tracks apart, whatever their program.
SELECT
    CASE WHEN is_drum THEN 16 ELSE program // 8 END AS idx,
    CASE WHEN is_drum THEN 'Drums' ELSE [
        'Piano', 'Chromatic percussion', 'Organ', 'Guitar',
        'Bass', 'Strings', 'Ensemble', 'Brass', 'Reed', 'Pipe',
        'Synth lead', 'Synth pad', 'Synth effects', 'Ethnic',
        'Percussive', 'Sound effects'
    ][program // 8 + 1] END AS family,
    count(*) AS tracks,
    count(DISTINCT piece_id) AS pieces,
    sum(n_notes) AS notes
FROM tracks
WHERE is_drum OR program BETWEEN 0 AND 127
GROUP BY ALL
ORDER BY idx
