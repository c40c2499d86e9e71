-- Snapshot versions, oldest first, with their rows per split
-- and their tokens.
SELECT
    s.name,
    s.version,
    s.created_at,
    s.scheme,
    s.n_pieces,
    s.n_tokens,
    count(sp.piece_id) FILTER (WHERE sp.split = 'train') AS train,
    count(sp.piece_id) FILTER (WHERE sp.split = 'valid') AS valid,
    count(sp.piece_id) FILTER (WHERE sp.split = 'test') AS test
FROM snapshots s
LEFT JOIN snapshot_pieces sp USING (name, version)
GROUP BY ALL
ORDER BY s.created_at, s.name, s.version
