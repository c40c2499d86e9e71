-- The headline numbers at the top of the report.
SELECT
    (SELECT count(*) FROM pieces) AS source_items,
    (SELECT count(DISTINCT piece_id) FROM pieces
     WHERE status = 'ok') AS pieces_ok,
    (SELECT coalesce(sum(duration_s), 0) / 3600
     FROM features) AS hours,
    (SELECT count(*) FROM pieces WHERE status = 'rejected'
     AND NOT coalesce(is_duplicate, false)) AS rejected,
    (SELECT count(*) FROM pieces
     WHERE is_duplicate) AS duplicate_items,
    (SELECT count(DISTINCT dedup_cluster)
     FROM features) AS dedup_clusters,
    (SELECT count(DISTINCT song_group)
     FROM features) AS song_groups,
    (SELECT count(DISTINCT scheme) FROM tokens) AS schemes,
    (SELECT count(*) FROM snapshots) AS snapshot_versions
