-- The views users query (contract: names and listed columns; columns may be added).
-- {table} placeholders are replaced with a read_parquet(...) of that table's committed files.
-- <table>_t views are the stored tables as they are (internal; the pipeline reads them).

CREATE OR REPLACE VIEW pieces_t AS SELECT * FROM {pieces};
CREATE OR REPLACE VIEW rejects_t AS SELECT * FROM {rejects};
CREATE OR REPLACE VIEW tracks_t AS SELECT * FROM {tracks};
CREATE OR REPLACE VIEW piece_facts_t AS SELECT * FROM {piece_facts};
CREATE OR REPLACE VIEW piece_analysis_t AS SELECT * FROM {piece_analysis};
CREATE OR REPLACE VIEW track_texture_t AS SELECT * FROM {track_texture};
CREATE OR REPLACE VIEW chords_t AS SELECT * FROM {chords};
-- one row per piece: curate replaces the rows whose cluster changed (DELETE + INSERT in one
-- transaction); a lake upgraded from full per-run versions keeps its older rows, hence the QUALIFY
CREATE OR REPLACE VIEW dedup_latest AS
SELECT * FROM {dedup} QUALIFY row_number() OVER (PARTITION BY piece_id ORDER BY dedup_run DESC) = 1;

CREATE OR REPLACE VIEW dedup_pairs_t AS SELECT * FROM {dedup_pairs};
CREATE OR REPLACE VIEW track_signatures_t AS SELECT * FROM {track_signatures};
CREATE OR REPLACE VIEW song_pairs_t AS SELECT * FROM {song_pairs};
CREATE OR REPLACE VIEW song_groups_latest AS
SELECT * FROM {song_groups} QUALIFY row_number() OVER (PARTITION BY piece_id ORDER BY song_run DESC) = 1;

-- one row per decision of clusters and groups (scope full / delta), newest last
CREATE OR REPLACE VIEW curate_decisions AS SELECT * FROM {curate_decisions};

CREATE OR REPLACE VIEW pieces AS SELECT * FROM pieces_t;

CREATE OR REPLACE VIEW rejects AS SELECT * FROM rejects_t;

CREATE OR REPLACE VIEW tracks AS
SELECT
    t.* EXCLUDE (is_monophonic),
    coalesce(tt.is_monophonic_v1, t.is_monophonic) AS is_monophonic,
    tt.texture,
    tt.max_polyphony_legato,
    tt.max_onset_polyphony,
    tt.share_poly,
    tt.role,
    tt.role_confidence,
    tt.expressive,
    tt.onset_metric_level,
    tt.onset_grid_dev
FROM tracks_t t
LEFT JOIN track_texture_t tt USING (piece_id, track_index);

CREATE OR REPLACE VIEW features AS
SELECT
    f.*,
    a.* EXCLUDE (piece_id, dedup_vector),
    coalesce(d.dedup_cluster, f.piece_id) AS dedup_cluster,
    coalesce(d.is_representative, true) AS is_dedup_representative,
    coalesce(g.song_group, d.dedup_cluster, f.piece_id) AS song_group
FROM piece_facts_t f
LEFT JOIN piece_analysis_t a USING (piece_id)
LEFT JOIN dedup_latest d USING (piece_id)
LEFT JOIN song_groups_latest g USING (piece_id);

-- song identity (rule song-v1): a piece's group and what joined it; one row per curated piece
CREATE OR REPLACE VIEW song_groups AS
SELECT
    g.piece_id, g.song_group, g.joined_by, g.rule, g.threshold, g.min_shared,
    count(*) OVER (PARTITION BY g.song_group) AS group_size,
    d.dedup_cluster
FROM song_groups_latest g
LEFT JOIN dedup_latest d USING (piece_id);

-- the evidence: verified track pairs between pieces, with the rule's decision at the stored threshold
CREATE OR REPLACE VIEW song_matches AS
SELECT
    p.* EXCLUDE (run_id, scheme),
    p.scheme AS track_scheme,
    -- corpus.curation.songs.passes: STRONG_SHARED 96 at STRONG_CONTAINMENT 0.4
    (p.shared_ngrams >= t.min_shared AND (p.containment >= t.threshold
        OR (p.shared_ngrams >= 96 AND p.containment >= 0.4))) AS joins
FROM song_pairs_t p
LEFT JOIN (SELECT any_value(threshold) AS threshold, any_value(min_shared) AS min_shared FROM song_groups_latest) t ON true;

-- per pitched track: what it does (measures kept beside the song rule)
CREATE OR REPLACE VIEW track_signatures AS
SELECT * EXCLUDE (ngrams, vector) FROM track_signatures_t;

-- chord labels (rule chords-v1): one row per harmonic change, with the piece's key beside the degrees
CREATE OR REPLACE VIEW chords AS
SELECT c.*, a.key_tonic, a.key_mode
FROM chords_t c
LEFT JOIN piece_analysis_t a USING (piece_id);

CREATE OR REPLACE VIEW tokens AS SELECT * FROM {tokens};

CREATE OR REPLACE VIEW tokenizers AS SELECT * FROM {tokenizers};

CREATE OR REPLACE VIEW snapshots AS SELECT * FROM {snapshots};

CREATE OR REPLACE VIEW snapshot_pieces AS SELECT * FROM {snapshot_pieces};
