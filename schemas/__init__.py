"""Arrow schemas of the lake's tables and the SQL of its DuckDB views (versioned).

Tables are stored; views are what users query. A table's partition columns (hive keys in
the path) are not stored inside its files. Sources may add typed provenance columns to
``pieces`` (for example ``lmd_md5``); views read files with ``union_by_name`` so columns
added later read as NULL in older files.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

SCHEMA_VERSION = 1

TS = pa.timestamp("us", tz="UTC")

TABLES: dict[str, pa.Schema] = {
    # one row per source item (provenance); many rows may share a piece_id
    "pieces": pa.schema(
        [
            ("piece_id", pa.string()),  # sha256 of the bytes; NULL when the bytes could not be read
            ("source_uri", pa.string()),
            ("name", pa.string()),
            ("license", pa.string()),
            ("size_bytes", pa.int64()),
            ("md5", pa.string()),
            ("ingested_at", TS),
            ("status", pa.string()),  # ok / rejected
            ("is_duplicate", pa.bool_()),  # these bytes were already in the lake (or earlier in the run)
            ("reason", pa.string()),  # reject reason when status = rejected
            ("run_id", pa.string()),
        ]
    ),
    "rejects": pa.schema(
        [
            ("piece_id", pa.string()),
            ("stage", pa.string()),
            ("reason", pa.string()),
            ("detail", pa.string()),
            ("source_uri", pa.string()),
            ("created_at", TS),
            ("run_id", pa.string()),
        ]
    ),
    "tracks": pa.schema(
        [
            ("piece_id", pa.string()),
            ("track_index", pa.int32()),
            ("name", pa.string()),
            ("program", pa.int32()),
            ("is_drum", pa.bool_()),
            ("n_notes", pa.int64()),
            ("pitch_min", pa.int32()),
            ("pitch_max", pa.int32()),
            ("max_polyphony", pa.int32()),
            ("is_monophonic", pa.bool_()),
        ]
    ),
    # parse-level facts, one row per parsed (ok) piece
    "piece_facts": pa.schema(
        [
            ("piece_id", pa.string()),
            ("midi_format", pa.int32()),
            ("ticks_per_quarter", pa.int32()),
            ("n_tracks", pa.int32()),
            ("n_pitched_tracks", pa.int32()),
            ("n_drum_tracks", pa.int32()),
            ("n_notes", pa.int64()),
            ("duration_ticks", pa.int64()),
            ("duration_quarters", pa.float64()),
            ("duration_s", pa.float64()),
            ("tempo_bpm", pa.float64()),  # the first tempo (120 when the file declares none)
            ("tempos_bpm", pa.list_(pa.float64())),
            ("time_signature", pa.string()),  # the first one, "4/4" when none
            ("time_signatures", pa.list_(pa.string())),
            ("key_signatures", pa.list_(pa.string())),  # declared in the file, e.g. "G major"
            ("programs", pa.list_(pa.int32())),
            ("pitch_min", pa.int32()),
            ("pitch_max", pa.int32()),
            ("warnings", pa.list_(pa.string())),
            ("policy", pa.string()),  # lenient / strict
            ("parser", pa.string()),  # e.g. symusic 0.6.0
        ]
    ),
}

# typed provenance columns sources add to ``pieces`` (other keys get an inferred type)
PIECE_EXTRAS: dict[str, pa.DataType] = {
    # lakh
    "lmd_md5": pa.string(),
    "lmd_layout": pa.string(),
    "msd_ids": pa.list_(pa.string()),
    "match_scores": pa.string(),  # JSON {msd_id: score}
    "max_match_score": pa.float64(),
    "original_names": pa.list_(pa.string()),
    # lpd
    "lpd_variant": pa.string(),
    "lpd_subset": pa.string(),
    "npz_sha256": pa.string(),
    "npz_uri": pa.string(),
    # music21
    "music21_collection": pa.string(),
}

# the partition keys of each table (hive directories)
PARTITIONS: dict[str, tuple[str, ...]] = {
    "pieces": ("source",),
    "rejects": ("stage",),
    "tracks": (),
    "piece_facts": (),
}

VIEWS_SQL = Path(__file__).with_name("views.sql")
