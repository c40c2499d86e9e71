-- The views users query (contract: names and listed columns; columns may be added).
-- {table} placeholders are replaced with a read_parquet(...) of that table's committed files.

CREATE OR REPLACE VIEW pieces AS
SELECT * FROM {pieces};

CREATE OR REPLACE VIEW rejects AS
SELECT * FROM {rejects};

CREATE OR REPLACE VIEW tracks AS
SELECT * FROM {tracks};

CREATE OR REPLACE VIEW features AS
SELECT
    f.*,
    CASE
        WHEN f.n_pitched_tracks = 0 THEN 'drums_only'
        WHEN (SELECT bool_and(t.is_monophonic) FROM {tracks} t
              WHERE t.piece_id = f.piece_id AND NOT t.is_drum) AND f.n_pitched_tracks = 1
            THEN 'monophonic'
        ELSE 'polyphonic'
    END AS texture,
    CAST(NULL AS VARCHAR) AS key_tonic,
    CAST(NULL AS VARCHAR) AS key_mode,
    CAST(NULL AS DOUBLE) AS key_confidence,
    f.piece_id AS dedup_cluster
FROM {piece_facts} f;
