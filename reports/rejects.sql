-- Rejected items per stage and reason, with the earliest
-- example of each (its source path, or its piece id).
SELECT
    stage,
    reason,
    count(*) AS n,
    arg_min(coalesce(source_uri, piece_id), created_at)
        AS example,
    arg_min(detail, created_at) AS detail
FROM rejects
GROUP BY stage, reason
ORDER BY n DESC, stage, reason
