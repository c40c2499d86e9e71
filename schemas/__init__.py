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
            ("reason", pa.string()),
            ("detail", pa.string()),
            ("source_uri", pa.string()),
            ("created_at", TS),
            ("run_id", pa.string()),
            # tokenize-stage rejects are per (scheme, tokenizer, transposition)
            ("scheme", pa.string()),
            ("tokenizer_hash", pa.string()),
            ("transpose", pa.int32()),
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
    # curate: one row per analysed piece
    "piece_analysis": pa.schema(
        [
            ("piece_id", pa.string()),
            ("texture", pa.string()),  # monophonic / polyphonic / empty / drums_only
            ("texture_rule", pa.string()),
            ("max_polyphony", pa.int32()),
            ("max_polyphony_legato", pa.int32()),
            ("max_onset_polyphony", pa.int32()),
            ("share_poly", pa.float64()),
            ("n_monophonic_tracks", pa.int32()),
            # the default key (corpus.curation.key_evidence: histogram + final/first bass + final
            # harmony + primary chords of the chord labels; more evidence measured, weighing 0)
            ("key_tonic", pa.string()),
            ("key_tonic_pc", pa.int32()),
            ("key_mode", pa.string()),
            ("key_correlation", pa.float64()),  # the histogram's Pearson r for that key
            ("key_confidence", pa.float64()),  # weighted-score margin to the runner-up key
            ("key_profile", pa.string()),  # the method, e.g. evidence-v3
            # music21's analyze('key') (AardenEssen histogram), by the backend in key_backend
            ("key_music21_tonic", pa.string()),
            ("key_music21_tonic_pc", pa.int32()),
            ("key_music21_mode", pa.string()),
            ("key_music21_correlation", pa.float64()),
            ("key_music21_confidence", pa.float64()),  # correlation margin to the runner-up key
            ("key_backend", pa.string()),  # ours / music21: what made the key_music21_* columns
            ("key_krumhansl", pa.string()),  # the Krumhansl-Schmuckler estimate, for comparison
            ("key_declared", pa.string()),  # the first key signature meta event
            ("key_windows", pa.list_(pa.string())),  # key per 8 bars
            ("key_n_windows_differing", pa.int32()),
            ("content_hash", pa.string()),
            ("content_hash_transposed", pa.string()),
            ("dedup_vector", pa.list_(pa.float32())),
            ("curate_version", pa.string()),
            # chord summary (corpus.curation.chords)
            ("chord_rule", pa.string()),  # chords-v1
            ("chord_change_rate", pa.float64()),  # changes of chord label per beat
            ("chord_progression", pa.string()),  # most frequent 4 consecutive degrees, e.g. I-V-vi-IV
            ("chord_progression_count", pa.int32()),
            # performed or quantized (corpus.curation.expressive): all onsets of the piece merged
            ("onset_metric_level", pa.float64()),  # median metric level of the onsets (NOMML-style)
            ("onset_grid_dev", pa.float64()),  # median distance from the 1/48-quarter grid, in steps
            ("expressive", pa.string()),  # expressive / quantized (NULL: under 8 onsets)
            ("expressive_rule", pa.string()),
            # track roles (corpus.curation.roles)
            ("melody_track", pa.int32()),  # track_index of the melody-role track (NULL: none)
            ("role_rule", pa.string()),
        ]
    ),
    "track_texture": pa.schema(
        [
            ("piece_id", pa.string()),
            ("track_index", pa.int32()),
            ("texture", pa.string()),
            ("max_polyphony_legato", pa.int32()),
            ("max_onset_polyphony", pa.int32()),
            ("share_poly", pa.float64()),
            ("is_monophonic_v1", pa.bool_()),
            ("onset_metric_level", pa.float64()),  # corpus.curation.expressive
            ("onset_grid_dev", pa.float64()),
            ("expressive", pa.string()),  # expressive / quantized (NULL: under 8 onsets)
            ("role", pa.string()),  # melody / bass / chords / drums / other (corpus.curation.roles)
            ("role_confidence", pa.float64()),
        ]
    ),
    # curate (corpus.curation.chords): one row per harmonic change (equal consecutive beats merged)
    "chords": pa.schema(
        [
            ("piece_id", pa.string()),
            ("chord_index", pa.int32()),  # 0, 1, ... in time order
            ("start_beat", pa.int32()),  # index of its first beat on the piece's beat grid
            ("n_beats", pa.int32()),
            ("start_tick", pa.int64()),
            ("end_tick", pa.int64()),
            ("start_s", pa.float64()),
            ("end_s", pa.float64()),
            ("root_pc", pa.int32()),  # 0 = C; NULL for N
            ("root", pa.string()),  # C, C#, D, Eb, ...
            ("quality", pa.string()),  # maj min dim aug sus2 sus4 maj7 min7 7 dim7 hdim7, or N
            ("bass_pc", pa.int32()),  # lowest sounding pitch class
            ("label", pa.string()),  # C:maj, A:min7/G, N
            ("degree", pa.string()),  # Roman numeral in the piece's key, no seventh: I, vi, bVII, viio
            ("roman", pa.string()),  # with the seventh: V7, IVmaj7, ii7, viih7
            ("score", pa.float64()),  # template match (cosine + bass bonus + prior), mean over its beats
        ]
    ),
    # every curate run writes the complete cluster assignment; views read the latest run
    "dedup": pa.schema(
        [
            ("piece_id", pa.string()),
            ("dedup_cluster", pa.string()),  # the representative's piece_id
            ("is_representative", pa.bool_()),
            ("dedup_run", pa.string()),
            ("threshold", pa.float64()),
        ]
    ),
    # near-duplicate vector pairs (score >= 0.5), appended by the run that found them; dedup decides from them
    "dedup_pairs": pa.schema(
        [
            ("piece_a", pa.string()),  # piece_a < piece_b
            ("piece_b", pa.string()),
            ("score", pa.float64()),  # cosine of the piece vectors
            ("run_id", pa.string()),
        ]
    ),
    # curate, song identity (corpus.curation.songs): one row per pitched track with notes, once per piece
    "track_signatures": pa.schema(
        [
            ("piece_id", pa.string()),
            ("track_index", pa.int32()),
            ("scheme", pa.string()),  # track-ngrams-v1
            ("n_notes", pa.int64()),
            ("n_onsets", pa.int64()),  # chords of the track's own skyline
            ("pitch_mean", pa.float64()),
            ("skyline_share", pa.float64()),  # share of the piece's chords whose top note this track plays
            ("n_ngrams", pa.int32()),  # distinct interval 5-grams of the track's skyline
            ("has_identity", pa.bool_()),  # n_ngrams >= 16: indexed and matched
            ("ngrams", pa.list_(pa.int32())),  # the sorted codes (identity tracks only)
            ("vector", pa.list_(pa.float32())),  # retrieval vector, 256 floats (identity tracks only)
        ]
    ),
    # verified track matches between pieces, appended by the run that found them (evidence of song-v1)
    "song_pairs": pa.schema(
        [
            ("piece_a", pa.string()),  # piece_a < piece_b
            ("track_a", pa.int32()),
            ("piece_b", pa.string()),
            ("track_b", pa.int32()),
            ("cosine", pa.float64()),  # of the retrieval vectors
            ("shared_ngrams", pa.int32()),  # distinct interval 5-grams in both tracks
            ("containment", pa.float64()),  # shared / the smaller track's distinct n-grams
            ("scheme", pa.string()),
            ("run_id", pa.string()),
        ]
    ),
    # the song group of every curated piece under the rule; a run writes it when any group changed
    "song_groups": pa.schema(
        [
            ("piece_id", pa.string()),
            ("song_group", pa.string()),  # smallest external id (msd:..., mutopia:...) or smallest piece_id
            ("joined_by", pa.string()),  # msd / mutopia / lineage / lmd_md5 / dedup / melody / self
            ("rule", pa.string()),  # song-v1
            ("threshold", pa.float64()),  # containment threshold of the melody rule
            ("min_shared", pa.int32()),  # shared n-grams the melody rule also asks for
            ("song_run", pa.string()),
        ]
    ),
    # curate: one row per decision of dedup clusters and song groups (the totals after it, and how
    # it was reached: "full" over every piece, or "delta" over the song groups new pieces touch)
    "curate_decisions": pa.schema(
        [
            ("run_id", pa.string()),
            ("decided_at", TS),
            ("scope", pa.string()),  # full / delta
            ("params_json", pa.string()),  # thresholds, rule, vector and track configs
            ("lake_version", pa.int64()),  # the lake version (DuckLake snapshot) the decision read
            ("redecided", pa.int64()),  # pieces whose cluster and group were decided again
            ("pieces", pa.int64()),
            ("clusters", pa.int64()),
            ("duplicate_pairs", pa.int64()),
            ("song_groups", pa.int64()),
            ("song_pairs", pa.int64()),
        ]
    ),
    # tokenize: one row per (piece, scheme, tokenizer, transposition); partitioned by scheme and hash
    "tokens": pa.schema(
        [
            ("piece_id", pa.string()),
            ("transpose", pa.int32()),  # semitones applied to the pitched notes (0 = as ingested)
            ("n_tokens", pa.int64()),  # tokens over all sequences (a multi-vocabulary token counts once)
            ("n_sequences", pa.int32()),
            ("seq_lengths", pa.list_(pa.int32())),  # one per sequence (per track when the config has no single stream)
            ("ids", pa.list_(pa.int32())),  # single-vocabulary schemes: all sequences concatenated
            ("ids_multi", pa.list_(pa.list_(pa.int32()))),  # multi-vocabulary schemes: one list per token
            ("run_id", pa.string()),
            # per sequence, the token index where each bar starts (corpus.tokenize.bars); NULL where the
            # encoder gives no event times, and in rows tokenized before the column existed
            ("bar_starts", pa.list_(pa.list_(pa.int32()))),
        ]
    ),
    # one row per registered tokenizer; its miditok tokenizer.json is at tokenizers/<hash>/
    "tokenizers": pa.schema(
        [
            ("scheme", pa.string()),  # the preset or name it was registered under
            ("tokenizer_hash", pa.string()),
            ("tokenization", pa.string()),  # miditok class (REMI, TSD, ...)
            ("config_json", pa.string()),
            ("miditok_version", pa.string()),
            ("vocab_size", pa.int64()),
            ("is_multi_vocab", pa.bool_()),
            ("created_at", TS),
        ]
    ),
    "snapshots": pa.schema(
        [
            ("name", pa.string()),
            ("version", pa.string()),
            ("created_at", TS),
            ("n_pieces", pa.int64()),
            ("n_tokens", pa.int64()),
            ("manifest_sha256", pa.string()),
            ("scheme", pa.string()),
            ("tokenizer_hash", pa.string()),
            ("path", pa.string()),  # relative to the lake root
        ]
    ),
    "snapshot_pieces": pa.schema(
        [
            ("name", pa.string()),
            ("version", pa.string()),
            ("piece_id", pa.string()),
            ("split", pa.string()),  # train / valid / test
            ("transpose", pa.int32()),
            ("n_tokens", pa.int64()),
        ]
    ),
}

# the pieces columns of a Mutopia item (corpus.sources.mutopia), all VARCHAR
MUTOPIA_META_KEYS: tuple[str, ...] = (
    "mutopia_id",
    "title",
    "composer",
    "composer_name",
    "opus",
    "instrument",
    "style",
    "date",
    "license_text",
    "source_page",
    "file_url",
    "movement",
    "zip_url",
)

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
    # mutopia (all text; movement and zip_url NULL for single .mid files)
    **{k: pa.string() for k in MUTOPIA_META_KEYS},
    # melodies extracted from multitrack pieces (lineage)
    "parent_piece_id": pa.string(),
    "parent_track": pa.int32(),
}

# the partition keys of each table (hive directories)
PARTITIONS: dict[str, tuple[str, ...]] = {
    "pieces": ("source",),
    "rejects": ("stage",),
    "tracks": (),
    "piece_facts": (),
    "piece_analysis": (),
    "track_texture": (),
    "chords": (),
    "dedup": (),
    "dedup_pairs": (),
    "track_signatures": (),
    "song_pairs": (),
    "song_groups": (),
    "curate_decisions": (),
    "tokens": ("scheme", "tokenizer_hash"),
    "tokenizers": (),
    "snapshots": (),
    "snapshot_pieces": (),
}

VIEWS_SQL = Path(__file__).with_name("views.sql")
