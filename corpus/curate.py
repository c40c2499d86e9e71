"""The curate stage: texture, key and duplicate clusters for pieces not yet curated.

Per piece (in the engine's workers): texture measures per track and per piece
(:mod:`corpus.curation.texture`), the key from a duration-weighted pitch-class histogram
(:mod:`corpus.curation.key`), windowed keys, the declared key signature, and the dedup
signature (content hashes and the near-duplicate vector, :mod:`corpus.curation.dedup`).
These rows are appended once per piece (``piece_analysis``, ``track_texture``); the chord
labels per harmonic change (:mod:`corpus.curation.chords`) go to ``chords``, their per-piece
summary (``chord_progression``, ``chord_change_rate``) to ``piece_analysis``.

Then, over the whole lake (in the driver): pieces join duplicate clusters by content hash,
transposition-invariant hash, near-duplicate vectors above the threshold (faiss), and the
same Lakh md5 (an LPD piece and the MIDI it came from). Every curate run writes the complete
assignment as a new version of ``dedup``; the ``features`` view shows the latest. The
faiss index is saved under ``index/neardup`` for ``midicorpus similar``.

The whole-piece key (``key_tonic``, ``key_tonic_pc``, ``key_mode``, ``key_correlation``,
``key_confidence``, ``key_profile`` = ``evidence-v3``) is the default estimate of
:mod:`corpus.curation.key_evidence` (histogram, first and last bass, last harmony, primary chords
of the chord labels, computed once for the key and the ``chords`` table); transposition
(``--transpose normalize``) follows it. music21's estimate is kept beside it in
``key_music21_*``. Key backend (``key_backend``), for those columns: ``"ours"`` (default) is
:func:`corpus.curation.key.estimate_key`, the fast emulation of music21; ``"music21"`` runs
music21's own ``analyze('key')`` (:func:`corpus.curation.key.estimate_key_music21`, about 2.5 s per file). The windowed keys,
``key_krumhansl`` and the default key always come from ours. The backend that produced
``key_music21_*`` is the row's ``key_backend`` (NULL when the piece has no key); when music21 raises on a piece, ours
is used for it and recorded as such (counted in ``CurateSummary.key_fallbacks``). The backend
applies to the pieces analysed in that run: already curated pieces are not analysed again.

Melody extraction (``extract_melodies=True``, :mod:`corpus.curation.melody`): after the pending
pieces are analysed, every monophonic pitched track (>= ``min_melody_notes`` notes) of a
curated polyphonic piece is ingested as a derived piece (source ``melody``, lineage in
``pieces.parent_piece_id`` / ``parent_track``); the new pieces are then analysed in the same
run, before the duplicate clusters are recomputed over everything.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from corpus.curation.songs import DEFAULT_THRESHOLD as DEFAULT_SONG_THRESHOLD
from corpus.engine import Engine, prefetched
from corpus.lake import Lake, new_txid, now_utc

KEY_PROFILE = "aarden"
WINDOW_BARS = 8
DEDUP_THRESHOLD = 0.7
DEDUP_PAIR_FLOOR = 0.5  # near-dup pairs at or above this are stored, so the threshold can move down to it
# v4: default key rule evidence-v3; v3: evidence-v2; v2: expressive (nomml-v1), track roles (roles-v1), chords
CURATE_VERSION = "curate-v4"
KEY_BACKENDS = ("ours", "music21")


@dataclass
class CurateSummary:
    analysed: int = 0
    failed: int = 0
    pieces: int = 0
    clusters: int = 0
    duplicate_pairs: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    key_backend: str = "ours"
    key_fallbacks: int = 0  # pieces where music21 raised and our key was used
    melodies: int | None = None  # new derived melody pieces (None: extraction not asked for)
    melody_counts: dict[str, int] = field(default_factory=dict)
    song_groups: int = 0
    song_pairs: int = 0  # verified track matches that join two pieces
    signed: int = 0  # pieces curated before song-v1 given their track signatures in this run
    dedup_rows_changed: int = 0  # dedup rows replaced in this run (a piece whose cluster changed, or new)
    decision_current: bool = False  # nothing new: clusters and song groups are those of the last run
    scope: str = ""  # how clusters and groups were decided: "full" (every piece) or "delta" (what new pieces touch)
    redecided: int = 0  # pieces whose cluster and group were decided in this run
    to_analyse: int = 0  # pieces to analyse in this run (a progress total)
    reanalysed: int = 0  # pieces analysed before by an older CURATE_VERSION, analysed again in this run
    stale_versions: dict[str, int] = field(default_factory=dict)  # those pieces per older version

    def line(self) -> str:
        again = ""
        if self.reanalysed:
            olds = ", ".join(f"{v}: {n}" for v, n in sorted(self.stale_versions.items()))
            again = (
                f"{self.reanalysed} pieces analysed again (analysed by an older version, {olds}; now {CURATE_VERSION})"
            )
        if self.decision_current:
            head = f"{again}; " if again else "nothing new: "
            return (
                f"{head}{self.pieces} pieces curated, in {self.clusters} dedup clusters and "
                f"{self.song_groups} song groups (as decided by the last run)"
            )
        s = (
            f"{self.analysed} pieces analysed ({self.failed} failed); "
            f"{self.pieces} pieces in {self.clusters} dedup clusters ({self.duplicate_pairs} duplicate pairs) "
            f"and {self.song_groups} song groups ({self.song_pairs} melody matches)"
        )
        if self.scope == "delta":
            s += f"; {self.redecided} pieces decided again (the song groups new pieces touch)"
        if self.signed:
            s += f"; track signatures added to {self.signed} pieces curated before song-v1"
        if again:
            s += f"; {again}"
        if self.melodies is not None:
            s += f"; {self.melodies} melodies extracted from {self.melody_counts.get('parents', 0)} pieces"
        if self.key_fallbacks:
            s += f"; music21 key failed on {self.key_fallbacks} pieces (ours used)"
        return s


def _check_key_backend(key_backend: str) -> str:
    if key_backend not in KEY_BACKENDS:
        raise ValueError(f"key_backend must be one of {KEY_BACKENDS}, got {key_backend!r}")
    return key_backend


def analyse_piece(piece_id: str, data: bytes, key_backend: str = "ours") -> dict[str, Any]:
    """Everything curate measures on one piece (a pure function of its bytes and the key backend).

    Returns ``{"row": piece_analysis row, "tracks": track_texture rows, "track_signatures": rows,
    "chords": chords rows}``, plus
    ``"key_fallback": message`` when the music21 backend raised and our key was used instead.
    """
    import symusic

    from corpus.curation import chords, dedup, expressive, key, key_evidence, roles, songs, texture
    from corpus.parse import smf_bytes

    _check_key_backend(key_backend)
    smf = smf_bytes(data)  # checked at ingest
    score = symusic.Score.from_midi(smf)
    piece_tex, track_tex = texture.piece_texture(score)
    pitches, _, weights = key.note_weights(score)  # once, for all the estimates
    m21 = key.estimate_key_from_weights(pitches, weights, KEY_PROFILE)
    backend = "ours" if m21 is not None else None
    fallback = None
    if m21 is not None and key_backend == "music21":
        try:
            m21 = key.estimate_key_music21(smf, KEY_PROFILE)
            backend = "music21"
        except Exception as exc:  # noqa: BLE001 - music21 refuses some files symusic reads; ours is kept
            fallback = f"{type(exc).__name__}: {exc}"
    alt = key.estimate_key_from_weights(pitches, weights, "krumhansl") if m21 is not None else None
    declared = key.declared_key(score)
    windows = key.windowed_keys(score, WINDOW_BARS, KEY_PROFILE) if m21 is not None else []
    segmented = chords.score_segments(score)  # chord labels: key evidence, then the chords table
    ev = (
        key_evidence.key_evidence(score, weights_cache=(pitches, weights), windows=windows, chord_segments=segmented[0])
        if m21
        else None
    )
    est = key_evidence.key_from_evidence(ev) if ev is not None else None
    sig = dedup.signature(score)
    track_sigs = songs.track_signatures(score, piece_id)
    piece_expr, track_expr = expressive.piece_expressive(score)
    track_roles = roles.piece_roles(score, track_tex, {g["track_index"]: g["skyline_share"] for g in track_sigs})
    row = {
        "piece_id": piece_id,
        "texture": piece_tex["texture"],
        "texture_rule": texture.TEXTURE_RULE,
        "max_polyphony": piece_tex.get("max_polyphony"),
        "max_polyphony_legato": piece_tex.get("max_polyphony_legato"),
        "max_onset_polyphony": piece_tex.get("max_onset_polyphony"),
        "share_poly": piece_tex.get("share_poly"),
        "n_monophonic_tracks": sum(1 for t in track_tex if t.get("texture") == "monophonic"),
        "key_tonic": est.tonic if est else None,
        "key_tonic_pc": est.tonic_pc if est else None,
        "key_mode": est.mode if est else None,
        "key_correlation": est.correlation if est else None,
        "key_confidence": est.confidence if est else None,
        "key_profile": key_evidence.KEY_METHOD if est else None,
        "key_music21_tonic": m21.tonic if m21 else None,
        "key_music21_tonic_pc": m21.tonic_pc if m21 else None,
        "key_music21_mode": m21.mode if m21 else None,
        "key_music21_correlation": m21.correlation if m21 else None,
        "key_music21_confidence": m21.confidence if m21 else None,
        "key_backend": backend,
        "key_krumhansl": alt.name if alt else None,
        "key_declared": f"{declared.tonic} {declared.mode}" if declared else None,
        "key_windows": [w.key.name if w.key else None for w in windows],
        "key_n_windows_differing": sum(1 for w in windows if w.key and est and w.key.name != est.name),
        "content_hash": sig.content_hash,
        "content_hash_transposed": sig.content_hash_transposed,
        "dedup_vector": sig.vector.astype(np.float32).tolist(),
        "curate_version": CURATE_VERSION,
        **_expressive_columns(piece_expr),
        "expressive_rule": expressive.EXPRESSIVE_RULE,
        "melody_track": next((i for i, (r, _) in sorted(track_roles.items()) if r == "melody"), None),
        "role_rule": roles.ROLE_RULE,
    }
    tracks = [
        {
            "piece_id": piece_id,
            "track_index": t["index"],
            "texture": t.get("texture"),
            "max_polyphony_legato": t.get("max_polyphony_legato"),
            "max_onset_polyphony": t.get("max_onset_polyphony"),
            "share_poly": t.get("share_poly"),
            "is_monophonic_v1": bool(t.get("is_monophonic", False)),
            **_expressive_columns(track_expr.get(t["index"], {})),
            "role": track_roles.get(t["index"], (None, None))[0],
            "role_confidence": track_roles.get(t["index"], (None, None))[1],
        }
        for t in track_tex
    ]
    chord_rows, chord_summary = chords.piece_chords(
        score, piece_id, row["key_tonic_pc"], row["key_mode"], segmented=segmented
    )
    row.update(chord_summary)
    out: dict[str, Any] = {"row": row, "tracks": tracks, "track_signatures": track_sigs, "chords": chord_rows}
    if fallback is not None:
        out["key_fallback"] = fallback
    return out


def _expressive_columns(m: dict[str, Any]) -> dict[str, Any]:
    return {k: m.get(k) for k in ("onset_metric_level", "onset_grid_dev", "expressive")}


def analyse_batch(batch: list[tuple[str, bytes]], key_backend: str = "ours") -> list[tuple[str, Any]]:
    """Dask task: analyse each piece; a failure is that piece's, with its message."""
    out: list[tuple[str, Any]] = []
    for pid, data in batch:
        try:
            out.append((pid, ("ok", analyse_piece(pid, data, key_backend))))
        except Exception as exc:  # noqa: BLE001 - recorded as a curate reject with the text
            out.append((pid, ("reject", "curate_error", f"{type(exc).__name__}: {exc}")))
    return out


def curate(
    lake: Lake,
    engine: Engine,
    progress: Callable[[CurateSummary], None] | None = None,
    batch_size: int = 16,
    commit_every: int = 1000,
    threshold: float = DEDUP_THRESHOLD,
    key_backend: str = "ours",
    extract_melodies: bool = False,
    min_melody_notes: int | None = None,
    song_threshold: float = DEFAULT_SONG_THRESHOLD,
) -> CurateSummary:
    """Analyse the pieces not yet analysed, then recompute duplicate clusters (lake locked).

    ``key_backend``: ``"ours"`` or ``"music21"`` (see the module docstring). With
    ``extract_melodies``, the melodies of polyphonic pieces are extracted and ingested after the
    analysis, and analysed in the same run (:mod:`corpus.curation.melody`; ``min_melody_notes``
    defaults to ``melody.MIN_MELODY_NOTES``). ``song_threshold``: the containment at which a
    verified track match joins two pieces in one song group (rule ``song-v1``,
    :mod:`corpus.curation.songs`); changing it re-decides from stored pairs, nothing is re-analysed.
    """
    from corpus.curation import melody

    _check_key_backend(key_backend)
    min_notes = melody.MIN_MELODY_NOTES if min_melody_notes is None else min_melody_notes
    if isinstance(min_notes, bool) or not isinstance(min_notes, int) or min_notes < 1:
        raise ValueError(f"min_melody_notes must be a positive integer, got {min_notes!r}")
    t0 = time.perf_counter()
    s = CurateSummary(key_backend=key_backend)
    run_id = new_txid()
    _analyse_pending(lake, engine, run_id, s, progress, batch_size, commit_every, key_backend)
    if extract_melodies:
        ing, counts = melody.extract_melodies(lake, engine, min_notes=min_notes)
        s.melodies = ing.ok
        s.melody_counts = {
            **counts,
            "ingested": ing.inputs,
            "duplicate": ing.duplicate,
            "rejected": ing.rejected,
            "unchanged": ing.unchanged,
        }
        _analyse_pending(lake, engine, run_id, s, progress, batch_size, commit_every, key_backend)
    _sign_pending(lake, engine, run_id, s, batch_size, commit_every)
    params = _decision_params(threshold, song_threshold)
    counts = _input_counts(lake)
    if s.analysed == 0 and s.signed == 0 and not s.melodies and _decision_current(lake, params, counts, s):
        s.decision_current = True
    else:
        phase = getattr(progress, "phase", None)  # a Progress bar says what runs while nothing is counted
        if phase is not None:
            phase("deciding dedup clusters and song groups (near-duplicate and melody matches)")
        _recluster(lake, run_id, threshold, s, song_threshold)
        _write_decision(lake, params, counts, s)
    s.seconds = time.perf_counter() - t0
    return s


# ---------------------------------------------------------------------------- no-op runs
# Dedup clusters and song groups are a function of the input tables and the rule's parameters.
# After each decision, ``index/decision.json`` records both (the inputs as row counts: those
# tables only grow); a run that analysed nothing finds them equal and returns at once.
DECISION_FILE = "index/decision.json"
DECISION_INPUTS = ("pieces_t", "piece_analysis_t", "piece_facts_t", "track_signatures_t")
_SUMMARY_FIELDS = ("pieces", "clusters", "duplicate_pairs", "song_groups", "song_pairs")


def _decision_params(threshold: float, song_threshold: float) -> dict[str, Any]:
    from corpus.curation import dedup, songs

    return {
        "threshold": threshold,
        "song_threshold": song_threshold,
        "rule": songs.SONG_RULE,
        "min_shared": songs.MIN_SHARED,
        "vectors": dedup.VECTOR_CONFIG,
        "tracks": songs.TRACK_CONFIG,
    }


def _input_counts(lake: Lake) -> dict[str, int]:
    con = lake.connect()
    try:
        row = con.execute("SELECT " + ", ".join(f"(SELECT count(*) FROM {t})" for t in DECISION_INPUTS)).fetchone()
    finally:
        con.close()
    return dict(zip(DECISION_INPUTS, (int(x) for x in row), strict=True))


def _decision_current(lake: Lake, params: dict[str, Any], counts: dict[str, int], s: CurateSummary) -> bool:
    try:
        got = json.loads(lake.read_bytes(DECISION_FILE))
    except (FileNotFoundError, ValueError):
        return False
    if got.get("params") != json.loads(json.dumps(params)) or got.get("inputs") != counts:
        return False
    if not (lake.file_exists("index/neardup.json") or lake.list_files("index/neardup")[:1]):
        return False
    for k in _SUMMARY_FIELDS:
        setattr(s, k, int(got["summary"][k]))
    return True


def _write_decision(lake: Lake, params: dict[str, Any], counts: dict[str, int], s: CurateSummary) -> None:
    """After the decision is committed (a kill before this only costs the next run a recompute)."""
    body = {"params": params, "inputs": counts, "summary": {k: getattr(s, k) for k in _SUMMARY_FIELDS}}
    lake.write_bytes(DECISION_FILE, json.dumps(body, sort_keys=True).encode())


def _analyse_pending(
    lake: Lake,
    engine: Engine,
    run_id: str,
    s: CurateSummary,
    progress: Callable[[CurateSummary], None] | None,
    batch_size: int,
    commit_every: int,
    key_backend: str,
) -> None:
    """Analyse every parsed piece without a ``piece_analysis`` row or a curate reject, and analyse
    again the pieces analysed by an older ``CURATE_VERSION`` (their rows are replaced; see
    :func:`_stale_pieces`)."""
    con = lake.connect()
    try:
        todo = [
            r[0]
            for r in con.execute(
                "SELECT f.piece_id FROM piece_facts_t f ANTI JOIN piece_analysis_t a USING (piece_id) "
                "ANTI JOIN (SELECT piece_id FROM rejects WHERE stage = 'curate') r USING (piece_id) ORDER BY 1"
            ).fetchall()
        ]
        stale = _stale_pieces(con, s)
    finally:
        con.close()
    todo = todo + stale
    stale_ids = set(stale)
    s.to_analyse += len(todo)
    if progress:
        progress(s)

    rows: list[dict[str, Any]] = []
    tracks: list[dict[str, Any]] = []
    sigs: list[dict[str, Any]] = []
    chord_rows: list[dict[str, Any]] = []
    rejects: list[dict[str, Any]] = []

    def flush() -> None:
        if not (rows or rejects):
            return
        with lake.transaction({"command": "curate", "run_id": run_id}) as tx:
            # pieces analysed again replace their rows (their track signatures are kept: song-v1's)
            tx.write("piece_analysis", [r for r in rows if r["piece_id"] not in stale_ids])
            tx.write("track_texture", [r for r in tracks if r["piece_id"] not in stale_ids])
            tx.replace_rows("piece_analysis", "piece_id", [r for r in rows if r["piece_id"] in stale_ids])
            tx.replace_rows("track_texture", "piece_id", [r for r in tracks if r["piece_id"] in stale_ids])
            tx.write("track_signatures", sigs)
            tx.write("chords", [r for r in chord_rows if r["piece_id"] not in stale_ids])
            tx.replace_rows("chords", "piece_id", [r for r in chord_rows if r["piece_id"] in stale_ids])
            if rejects:
                tx.write("rejects", rejects, {"stage": "curate"})
        rows.clear()
        tracks.clear()
        sigs.clear()
        chord_rows.clear()
        rejects.clear()

    chunks = (todo[i : i + batch_size] for i in range(0, len(todo), batch_size))

    def fetch(ids: list[str]) -> list[tuple[str, bytes]]:
        return list(zip(ids, lake.get_raws(ids)))

    batches = prefetched(chunks, fetch) if lake.remote else map(fetch, chunks)
    for _, results in engine.map_unordered(analyse_batch, batches, key_backend):
        for pid, out in results:
            if out[0] == "ok":
                rows.append(out[1]["row"])
                tracks.extend(out[1]["tracks"])
                if pid in stale_ids:
                    s.reanalysed += 1
                else:
                    sigs.extend(out[1]["track_signatures"])
                    s.analysed += 1
                chord_rows.extend(out[1]["chords"])
                if "key_fallback" in out[1]:
                    s.key_fallbacks += 1
            else:
                rejects.append(
                    {
                        "piece_id": pid,
                        "reason": out[1],
                        "detail": out[2],
                        "source_uri": None,
                        "created_at": now_utc(),
                        "run_id": run_id,
                    }
                )
                s.failed += 1
                s.by_reason[out[1]] = s.by_reason.get(out[1], 0) + 1
        if len(rows) + len(rejects) >= commit_every:
            flush()
        if progress:
            progress(s)
    flush()


def _stale_pieces(con: Any, s: CurateSummary) -> list[str]:
    """Pieces whose ``piece_analysis`` row was written by another ``curate_version`` (an older
    analysis without the measures added since: NULL columns), unless a curate reject stands
    for them. ``CURATE_VERSION`` changes whenever analyse_piece gains or changes a measure, so a
    lake curated before re-analyses each such piece once; afterwards the query finds none (a
    scan of one column, so a run with nothing new stays fast). The versions found are noted in
    ``s.stale_versions`` for the summary line."""
    rows = con.execute(
        "SELECT a.piece_id, coalesce(a.curate_version, '(none)') FROM piece_analysis_t a "
        "ANTI JOIN (SELECT piece_id FROM rejects WHERE stage = 'curate') r USING (piece_id) "
        "WHERE a.curate_version IS DISTINCT FROM ? ORDER BY 1",
        [CURATE_VERSION],
    ).fetchall()
    for _, v in rows:
        s.stale_versions[str(v)] = s.stale_versions.get(str(v), 0) + 1
    return [str(r[0]) for r in rows]


def sign_batch(batch: list[tuple[str, bytes]]) -> list[tuple[str, Any]]:
    """Dask task: the track signatures of pieces analysed before song identity existed."""
    import symusic

    from corpus.curation import songs
    from corpus.parse import smf_bytes

    out: list[tuple[str, Any]] = []
    for pid, data in batch:
        try:
            out.append((pid, ("ok", songs.track_signatures(symusic.Score.from_midi(smf_bytes(data)), pid))))
        except Exception as exc:  # noqa: BLE001 - the piece keeps no track signature; counted, said in the summary
            out.append((pid, ("reject", "curate_error", f"{type(exc).__name__}: {exc}")))
    return out


def _sign_pending(
    lake: Lake, engine: Engine, run_id: str, s: CurateSummary, batch_size: int, commit_every: int
) -> None:
    """Track signatures for analysed pieces that have none yet (lakes curated before ``song-v1``)."""
    con = lake.connect()
    try:
        todo = [
            r[0]
            for r in con.execute(
                "SELECT DISTINCT a.piece_id FROM piece_analysis_t a "
                "JOIN tracks_t t ON t.piece_id = a.piece_id AND NOT t.is_drum AND t.n_notes > 0 "
                "ANTI JOIN track_signatures_t g ON g.piece_id = a.piece_id ORDER BY 1"
            ).fetchall()
        ]
    finally:
        con.close()
    if not todo:
        return
    rows: list[dict[str, Any]] = []

    def flush() -> None:
        if rows:
            with lake.transaction({"command": "curate signatures", "run_id": run_id}) as tx:
                tx.write("track_signatures", rows)
            rows.clear()

    chunks = (todo[i : i + batch_size] for i in range(0, len(todo), batch_size))

    def fetch(ids: list[str]) -> list[tuple[str, bytes]]:
        return list(zip(ids, lake.get_raws(ids)))

    batches = prefetched(chunks, fetch) if lake.remote else map(fetch, chunks)
    for _, results in engine.map_unordered(sign_batch, batches):
        for _pid, out in results:
            if out[0] == "ok":
                rows.extend(out[1])
                s.signed += 1
        if len(rows) >= commit_every:
            flush()
    flush()


def _fetch_vectors(con: Any, sql: str, ids: list[str], dim: int, recent: str | None = None) -> np.ndarray:
    """Rows of ``sql`` (``key``, ``vector``) for the keys ``ids``, as a matrix in that order.

    ``recent``: the same rows as ``sql`` but only those inserted since the index was saved
    (``ducklake_table_insertions``), which hold the new keys of a nightly run: read first, and used
    when they hold every key once; else (a rebuilt index, a re-analysed piece) ``sql`` is read. At 176k
    pieces ``sql`` streams 360 MB of vectors past 200 wanted keys (1.2 s), ``recent`` a few files."""
    import duckdb
    import pyarrow as pa
    import pyarrow.compute as pc

    if not ids:
        return np.zeros((0, dim), np.float32)
    wanted = pa.array(ids, pa.string())
    con.register("wanted_keys", pa.table({"key": wanted}))
    threads = con.execute("SELECT current_setting('threads')").fetchone()[0]
    tbl = None
    try:
        # a semi-join: the wanted keys are the hash table, the lake's vectors stream past it. One
        # thread: each reads a row group's vector column (~2 KB a row) at once; two held 170 MB
        # more on the 176k lake for the same answer
        con.execute("SET threads = 1")
        for source in [recent, sql] if recent else [sql]:
            try:
                got = con.execute(
                    f"SELECT key, vector FROM ({source}) WHERE key IN (SELECT key FROM wanted_keys)"
                ).to_arrow_table()
            except duckdb.Error:  # ``recent`` from a version expired since (lake maintain)
                if source == sql:
                    raise
                continue
            at = pc.index_in(wanted, value_set=got.column("key"))
            if at.null_count == 0 and got.num_rows == len(ids):
                tbl = got.take(at)
                break
            del got
    finally:
        con.execute(f"SET threads = {int(threads)}")
        con.unregister("wanted_keys")
    if tbl is None:
        raise RuntimeError(f"found no single vector for each of {len(ids)} keys")
    flat = tbl.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    del tbl
    return np.ascontiguousarray(flat.astype(np.float32, copy=False).reshape(len(ids), dim))


def _saved_at(index: Any) -> int | None:
    """The lake version whose keys ``index`` holds all of (recorded when curate saved it), or None."""
    v = None if index is None else index.meta.get("lake_version")
    return int(v) if isinstance(v, int) else None


def _now(con: Any) -> int:
    """The lake's current version (DuckLake snapshot id)."""
    return int(con.execute("SELECT id FROM ducklake_current_snapshot('lake')").fetchone()[0])


def _changes(kind: str, table: str, after: int, now: int) -> str:
    """The rows of ``table`` inserted (``kind`` ``insertions``) or deleted (``deletions``) after lake
    version ``after`` up to ``now``, as a DuckLake table function (which takes no subquery)."""
    return f"ducklake_table_{kind}('lake', 'store', '{table}', {int(after) + 1}, {int(now)})"


def _inserted_since(table: str, columns: str, where: str, version: int | None, now: int) -> str | None:
    """``columns`` of the ``table`` rows inserted after lake ``version`` up to ``now`` (the current
    version; a table function takes no subquery); None without a version."""
    if version is None:
        return None
    return f"SELECT {columns} FROM {_changes('insertions', table, version, now)} WHERE {where}"


def _open_index(lake: Lake, name: str, config: dict[str, object], known: Any) -> Any:
    """The saved index ``name`` when it is usable for incremental work, else None (rebuild).

    Usable: built with this config by a run that stored the pairs of every piece it holds
    (``pairs_stored``), holding no key the tables do not know (``known``: an Arrow string array).
    """
    import pyarrow.compute as pc

    try:
        index = load_index(lake, name, config)
    except (ValueError, OSError):  # another scheme or an unreadable folder: rebuilt from the tables
        return None
    if index is None:
        return None
    if not index.meta.get("pairs_stored") or not pc.all(pc.is_in(index.ids, value_set=known)).as_py():
        index.close()
        return None
    return index


def _saved_keys(lake: Lake, name: str, config: dict[str, object]) -> tuple[dict[str, Any], Any] | None:
    """The ``meta.json`` and keys (Arrow) of the saved index ``name`` when it was built with this
    config by a run that stored the pairs of its keys, else None. Its vectors are not read."""
    from corpus.curation import dedup

    if lake.remote:
        folder = _index_pointer(lake, name)
        if folder is None:
            return None
    else:
        folder = f"index/{name}"
    try:
        meta = json.loads(lake.read_bytes(f"{folder}/meta.json"))
        if not meta.get("pairs_stored") or meta.get("dim") != config["dim"]:
            return None
        if meta.get("vector_config", {}).get("scheme") != config["scheme"]:
            return None
        try:
            ids = dedup.read_ids(lake.read_bytes(f"{folder}/ids.arrow"))
        except FileNotFoundError:  # saved before ids.arrow
            ids = dedup.read_ids(lake.read_bytes(f"{folder}/ids.json"), "ids.json")
    except (FileNotFoundError, OSError, ValueError, KeyError):
        return None
    return (meta, ids) if meta.get("n") == len(ids) else None


def _index_current(lake: Lake, name: str, config: dict[str, object], known: Any) -> bool:
    """Whether the saved index ``name`` holds exactly the keys ``known`` (an Arrow string array),
    built with this config by a run that stored their pairs: then there is nothing to add or query,
    and its vectors (hundreds of MB on a Lakh-sized lake) are not read. Only its ``meta.json`` and
    ids are."""
    import pyarrow.compute as pc

    saved = _saved_keys(lake, name, config)
    if saved is None:
        return False
    ids = saved[1]
    # the same keys: as many, all of them held (each side's keys are unique)
    return len(ids) == len(known) and bool(pc.all(pc.is_in(known, value_set=ids)).as_py())


def _new_keys_since_saved(
    con: Any, lake: Lake, name: str, config: dict[str, object], table: str, key: str, order: str, where: str, now: int
) -> Any | None:
    """The keys of ``table`` (``key`` of its rows where ``where``) that the saved index ``name`` lacks,
    in the order of the columns ``order`` (as curate reads every key), found among the rows inserted since the index was saved, without reading every key: on a
    Lakh-sized lake the identity-track keys alone are 370k strings, and reading them sorted held
    150 MB. None when that answer is not certain, and the caller reads every key: no saved index or
    no recorded version, a row deleted since (a re-analysed piece), an IVF index the lake has
    outgrown (rebuilt from every key), or a count of the keys that differs from the index's plus the
    new ones. An empty array: the index holds every key."""
    import duckdb
    import pyarrow.compute as pc

    saved = _saved_keys(lake, name, config)
    if saved is None:
        return None
    meta, ids = saved
    since = meta.get("lake_version")
    if not isinstance(since, int):
        return None
    try:
        # as many rows as the index's keys and the new ones: then the keys are exactly those (the index's
        # keys were all there when it was saved and none was deleted since, the new ones are there, and
        # both are distinct), and the count needs no hash table of every key
        total = int(con.execute(f"SELECT count(*) FROM {table}_t WHERE {where}").fetchone()[0])
        if meta.get("kind") == "ivf" and total > 2 * int(meta.get("trained_n") or len(ids) or 1):
            return None
        if since >= now:
            return _arrow_column(con, f"SELECT {key} FROM {table}_t WHERE false") if total == len(ids) else None
        deleted = con.execute(f"SELECT count(*) FROM {_changes('deletions', table, since, now)}").fetchone()[0]
        if deleted:
            return None
        inserted = _arrow_column(
            con,
            f"SELECT k FROM (SELECT DISTINCT {key} AS k, {order} FROM {_changes('insertions', table, since, now)} "
            f"WHERE {where}) ORDER BY {order}",
        )
    except duckdb.Error:  # a version expired since (lake maintain)
        return None
    new = inserted.filter(pc.invert(pc.is_in(inserted, value_set=ids)))
    return new if len(ids) + len(new) == total else None


# Off: a sharded index breaks ties among equal scores at the k-th neighbour by shard (lower rows
# first), the index held whole by faiss's heap order. On the 176k synthetic lake, whose pieces share
# identical tracks by construction, a first curate with spill found 51,066 duplicate pairs, 1,685,433
# melody matches and 24,462 song groups against 51,062, 1,677,267 and 24,463 (same clusters), and it
# did not lower the peak, which is now the decision after the indexes are dropped.
SPILL_NEW_INDEX = False


def _update_index(index: Any, known: Any, vectors: Any, dim: int, spill: Path | None = None) -> tuple[Any, Any]:
    """Add the keys of ``known`` (an Arrow string array) that ``index`` lacks (``vectors(keys)`` gives
    their matrix); (index, the new keys as an Arrow array).

    Without an index, or once the lake has grown past twice what an IVF index was trained on,
    the index is built anew from every key (then every key is new: its pairs are collected again);
    an IVF one is written to ``spill`` a shard at a time as it is built (``NearDupIndex.build_from``).
    """
    from corpus.curation.dedup import NearDupIndex

    if index is not None and index.kind == "ivf" and len(known) > 2 * int(index.meta.get("trained_n", len(index)) or 1):
        index.close()
        index = None
    import pyarrow.compute as pc

    if index is None:  # the vectors are read a chunk at a time, never all at once beside the index
        index = NearDupIndex.build_from(known, lambda rows: vectors(known.take(rows).to_pylist()), dim, spill=spill)
        index.meta = {"trained_n": len(known)}
        return index, known
    new = known.filter(pc.invert(pc.is_in(known, value_set=index.ids)))
    return _add_keys(index, new, vectors), new


def _add_keys(index: Any, new: Any, vectors: Any) -> Any:
    """``index`` with the keys ``new`` (an Arrow string array) added, a chunk of vectors at a time."""
    from corpus.curation.dedup import BUILD_CHUNK

    for lo in range(0, len(new), BUILD_CHUNK):
        chunk = new.slice(lo, BUILD_CHUNK)
        index.add(chunk, vectors(chunk.to_pylist()))
    return index


def _recluster(
    lake: Lake, run_id: str, threshold: float, s: CurateSummary, song_threshold: float = DEFAULT_SONG_THRESHOLD
) -> None:
    """Dedup clusters and song groups, with work in proportion to what is new.

    The two faiss indexes (pieces, identity tracks) are kept under ``index/``; each run adds the
    new pieces and tracks, queries only those and stores the pairs it finds (``dedup_pairs``,
    ``song_pairs``). When the last decision (``curate_decisions``) was made with the same
    parameters, only the song groups the new pieces touch are decided again (scope ``delta``):
    the new pieces, every piece they share a hash, a near-duplicate pair, a track match, a Lakh
    md5, an MSD / Mutopia id or a lineage link with, and every member of those pieces' groups.
    Every link between older pieces lies inside one of their groups and every new link touches a
    new piece, so that set is closed under links and union-find over it alone gives what
    union-find over the lake gives (a test compares the two). Otherwise (first run, another
    threshold or rule) every piece is decided (scope ``full``). Rows are written where they changed.
    """
    import pyarrow as pa

    from corpus.curation import dedup, songs

    if threshold < DEDUP_PAIR_FLOOR:
        raise ValueError(
            f"dedup threshold must be >= {DEDUP_PAIR_FLOOR} (pairs below it are not stored), got {threshold!r}"
        )
    song_threshold = songs.check_threshold(song_threshold)
    params_json = json.dumps(_decision_params(threshold, song_threshold), sort_keys=True)
    staged: dict[str, Path] = {}  # index name -> its staged folder
    # an IVF index built anew is written here a shard at a time (then linked into its staged folder):
    # beside the index folder for a local lake (a killed run's is removed by the next, under the lock)
    if lake.remote:
        spill = Path(tempfile.mkdtemp(prefix="midicorpus-build-"))
    else:
        for stale in (lake.root / "index").glob(".build-*"):
            shutil.rmtree(stale, ignore_errors=True)
        spill = lake.root / "index" / f".build-{uuid.uuid4().hex[:8]}"
    try:
        con = lake.connect()
        try:
            # every key the indexes hold after this run was in the tables at this version
            start_version = _now(con)
            piece_keys = _arrow_column(
                con, "SELECT piece_id FROM piece_analysis_t JOIN piece_facts_t USING (piece_id) ORDER BY 1"
            )
            ids = piece_keys.to_pylist()
            s.pieces = len(ids)
            if not ids:
                return
            # --- piece index: new pieces against everything
            new_pieces: list[str] = []
            new_dup_pairs = _DupPairs.empty()
            if not _index_current(lake, "neardup", dedup.VECTOR_CONFIG, piece_keys):
                opened = _open_index(lake, "neardup", dedup.VECTOR_CONFIG, piece_keys)
                pidx, new_arr = _update_index(
                    opened,
                    piece_keys,
                    lambda keys, since=_saved_at(opened): _fetch_vectors(
                        con,
                        "SELECT piece_id AS key, dedup_vector AS vector FROM piece_analysis_t",
                        keys,
                        dedup.VECTOR_DIM,
                        _inserted_since(
                            "piece_analysis", "piece_id AS key, dedup_vector AS vector", "true", since, start_version
                        ),
                    ),
                    dedup.VECTOR_DIM,
                    spill / "neardup" if SPILL_NEW_INDEX else None,
                )
                del opened
                new_pieces = new_arr.to_pylist()
                new_dup_pairs = _DupPairs(pidx.ids, *pidx.pair_arrays(pidx.rows_of(new_arr), DEDUP_PAIR_FLOOR)).named()
                del new_arr
                # written now and dropped from memory (one index at a time); published after the pairs commit
                if new_pieces:
                    pidx.meta = {**pidx.meta, "pairs_stored": True, "lake_version": start_version}
                    staged["neardup"] = _stage_index(lake, "neardup", pidx, dedup.VECTOR_CONFIG)
                pidx.close()
                del pidx
            # --- track index: new identity tracks against every identity track
            twhere = f"has_identity AND scheme = '{songs.TRACK_SCHEME}'"
            tkey = "piece_id || ':' || track_index"
            tsql = f"SELECT {tkey} AS key, vector FROM track_signatures_t WHERE {twhere}"
            new_tracks = pa.array([], pa.string())
            matches = songs.empty_matches()  # an Arrow table (songs.match_tracks_table)
            # the new keys from the rows inserted since the index was saved; else every key, as one Arrow
            # array (a Lakh-sized lake has 370k identity tracks: no Python string each)
            delta_tracks = _new_keys_since_saved(
                con,
                lake,
                "tracks",
                songs.TRACK_CONFIG,
                "track_signatures",
                tkey,
                "piece_id, track_index",
                twhere,
                start_version,
            )
            opened = None
            if delta_tracks is not None and len(delta_tracks):
                try:
                    opened = load_index(lake, "tracks", songs.TRACK_CONFIG)
                except (ValueError, OSError):
                    opened = None
                if opened is None:
                    delta_tracks = None
            track_keys = (
                _arrow_column(
                    con, f"SELECT {tkey} FROM track_signatures_t WHERE {twhere} ORDER BY piece_id, track_index"
                )
                if delta_tracks is None
                else None
            )
            if track_keys is not None and not _index_current(lake, "tracks", songs.TRACK_CONFIG, track_keys):
                opened = _open_index(lake, "tracks", songs.TRACK_CONFIG, track_keys)
            elif track_keys is not None:
                track_keys = None  # the saved index holds every key: nothing to add or query
            if track_keys is not None or opened is not None:

                def fetch(keys: list[str], since: int | None = _saved_at(opened)) -> np.ndarray:
                    recent = _inserted_since("track_signatures", f"{tkey} AS key, vector", twhere, since, start_version)
                    return _fetch_vectors(con, tsql, keys, songs.TRACK_DIM, recent)

                if track_keys is not None:
                    tidx, new_tracks = _update_index(
                        opened, track_keys, fetch, songs.TRACK_DIM, spill / "tracks" if SPILL_NEW_INDEX else None
                    )
                else:
                    tidx, new_tracks = _add_keys(opened, delta_tracks, fetch), delta_tracks
                del opened, track_keys
                if len(new_tracks):
                    matches = songs.match_tracks_table(
                        con,
                        tidx,
                        new_tracks,
                        "SELECT piece_id, track_index, ngrams FROM track_signatures_t "
                        f"WHERE scheme = '{songs.TRACK_SCHEME}' AND has_identity",
                        dictionary=True,  # piece ids as codes: millions of matches at a first curate
                    )
                    tidx.meta = {**tidx.meta, "pairs_stored": True, "lake_version": start_version}
                    staged["tracks"] = _stage_index(lake, "tracks", tidx, songs.TRACK_CONFIG)
                tidx.close()
                del tidx
            cols = {r[0] for r in con.execute("DESCRIBE pieces").fetchall()}
            version = _now(con)
            base = _last_decision(con, params_json)
            decision: dict[str, Any] | None = None
            if base is not None:
                changed_rows = _pieces_changed_since(con, base["lake_version"])
                if changed_rows is not None:
                    undecided = _undecided(con, base["lake_version"])
                    fresh = undecided | set(new_pieces) | set(_pieces_of_tracks(new_tracks))
                    analysed = set(ids)
                    fresh |= changed_rows & analysed
                    decision = _delta_decision(
                        con,
                        fresh,
                        undecided,
                        analysed,
                        new_dup_pairs.tuples(),
                        songs.plain_matches(matches),
                        threshold,
                        song_threshold,
                        cols,
                        base,
                    )
            if decision is None:  # first decision, other parameters, or the last one's lake version expired
                got = _read_scope(con, None, cols)
        finally:
            con.close()

        if decision is None:
            after = _decide(got, new_dup_pairs, matches, threshold, song_threshold)
            was = dict(got["latest"])
            was_songs = {r[0]: (r[1], r[2], r[3]) for r in got["latest_songs"]}
            groups = after["groups"]
            del got
            decision = {
                "scope": "full",
                "totals": {k: after[k] for k in _SUMMARY_FIELDS},
                "redecided": len(ids),
                "dedup_rows": [(p, c) for p, c in sorted(after["reps"].items()) if was.get(p) != c],
                "song_rows": [
                    (p, groups.group_of[p], groups.joined_by[p])
                    for p in ids
                    if was_songs.get(p) != (groups.group_of[p], groups.joined_by[p], song_threshold)
                ],
            }
        for k, v in decision["totals"].items():
            setattr(s, k, int(v))

        with lake.transaction({"command": "curate dedup", "run_id": run_id}) as tx:
            for part in new_dup_pairs.tables(run_id):
                tx.write("dedup_pairs", part)
            tx.write("song_pairs", songs.match_rows(matches, run_id))
            # only the rows that changed are replaced (one row per piece): work in proportion to the change
            tx.replace_rows("dedup", "piece_id", _dedup_rows(decision["dedup_rows"], run_id, threshold))
            tx.replace_rows("song_groups", "piece_id", _song_rows(decision["song_rows"], run_id, song_threshold))
            tx.write(
                "curate_decisions",
                [
                    {
                        "run_id": run_id,
                        "decided_at": now_utc(),
                        "scope": decision["scope"],
                        "params_json": params_json,
                        "lake_version": version,
                        "redecided": decision["redecided"],
                        **decision["totals"],
                    }
                ],
            )
            s.dedup_rows_changed = len(decision["dedup_rows"])
            s.redecided = decision["redecided"]
            s.scope = decision["scope"]
    except BaseException:
        for path in staged.values():
            _discard_staged(lake, path)
        raise
    finally:
        shutil.rmtree(spill, ignore_errors=True)  # the staged folders hold their own links (or copies)
    # the indexes last: one that holds a piece promises that the piece's pairs are stored
    for name, path in staged.items():
        _publish_index(lake, name, path)


@dataclass
class _DupPairs:
    """Near-duplicate pairs found by this run: rows ``a``, ``b`` (int64) of ``keys`` (the index's ids,
    an Arrow string array) and their scores (float64), sorted by (a, b). NumPy arrays, not a Python
    tuple per pair: a first curate of a Lakh-sized lake finds millions."""

    keys: Any
    a: np.ndarray
    b: np.ndarray
    s: np.ndarray

    @classmethod
    def empty(cls) -> _DupPairs:
        import pyarrow as pa

        return cls(pa.array([], pa.string()), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64))

    def __len__(self) -> int:
        return len(self.a)

    def named(self) -> _DupPairs:
        """The same pairs over only the keys they name, in the same order (the index's id column is
        then not held past the index)."""
        import pyarrow as pa

        rows, at = np.unique(np.concatenate([self.a, self.b]), return_inverse=True)
        n = len(self.a)
        return _DupPairs(
            self.keys.take(pa.array(rows.astype(np.int64))), at[:n].astype(np.int64), at[n:].astype(np.int64), self.s
        )

    def tuples(self) -> list[tuple[str, str, float]]:
        """(key a, key b, score) per pair (a delta's few)."""
        return list(
            zip(self.keys.take(self.a).to_pylist(), self.keys.take(self.b).to_pylist(), self.s.tolist(), strict=True)
        )

    def tables(self, run_id: str, chunk: int = 262_144) -> Any:
        """``dedup_pairs`` rows as Arrow tables of ``chunk`` rows (each key a string only for its chunk)."""
        import pyarrow as pa

        for lo in range(0, len(self), chunk):
            hi = min(len(self), lo + chunk)
            yield pa.table(
                {
                    "piece_a": self.keys.take(self.a[lo:hi]),
                    "piece_b": self.keys.take(self.b[lo:hi]),
                    "score": pa.array([round(x, 6) for x in self.s[lo:hi].tolist()], pa.float64()),
                    "run_id": pa.array([run_id] * (hi - lo), pa.string()),
                }
            )


def _dedup_rows(rows: list[tuple[str, str]], run_id: str, threshold: float) -> Any:
    """``dedup`` rows of (piece, cluster) pairs, as Arrow columns (no dict per row: a full decision
    writes one row per piece of the lake)."""
    import pyarrow as pa

    from corpus.lake import TABLES

    n = len(rows)
    pids = [p for p, _ in rows]
    clusters = [c for _, c in rows]
    data = {
        "piece_id": pids,
        "dedup_cluster": clusters,
        "is_representative": [p == c for p, c in rows],
        "dedup_run": [run_id] * n,
        "threshold": [threshold] * n,
    }
    schema = TABLES["dedup"]
    return pa.table({f.name: pa.array(data.get(f.name, [None] * n), f.type) for f in schema}, schema=schema)


def _song_rows(rows: list[tuple[str, str, str]], run_id: str, song_threshold: float) -> Any:
    """``song_groups`` rows of (piece, group, joined_by) triples, sorted, as Arrow columns."""
    import pyarrow as pa

    from corpus.curation import songs
    from corpus.lake import TABLES

    rows = sorted(rows)
    n = len(rows)
    data = {
        "piece_id": [r[0] for r in rows],
        "song_group": [r[1] for r in rows],
        "joined_by": [r[2] for r in rows],
        "rule": [songs.SONG_RULE] * n,
        "threshold": [song_threshold] * n,
        "min_shared": [songs.MIN_SHARED] * n,
        "song_run": [run_id] * n,
    }
    schema = TABLES["song_groups"]
    return pa.table({f.name: pa.array(data.get(f.name, [None] * n), f.type) for f in schema}, schema=schema)


# analysed pieces without a cluster or a song group yet
# a piece without any row in the tables (their *_latest views pick one row per piece with a window
# over the whole table, which cost 3 s of a 176k nightly curate for the same answer)
_UNDECIDED_SQL = (
    "SELECT piece_id FROM piece_analysis_t JOIN piece_facts_t USING (piece_id) "
    "WHERE piece_id NOT IN (SELECT piece_id FROM lake.store.dedup) "
    "OR piece_id NOT IN (SELECT piece_id FROM lake.store.song_groups)"
)


def _latest(table: str, pieces: str) -> str:
    """The newest row per piece of ``table`` (``dedup`` or ``song_groups``) for the pieces of the query
    ``pieces``, as a subquery. The filter comes before the window, which so runs over those pieces'
    rows only: the ``*_latest`` views window the whole table (a hash partition of every piece, ~100 MB
    at 176k) before a filter on anything but the piece reaches them."""
    run = {"dedup": "dedup_run", "song_groups": "song_run"}[table]
    return (
        f"(SELECT * FROM lake.store.{table} WHERE piece_id IN ({pieces}) "
        f"QUALIFY row_number() OVER (PARTITION BY piece_id ORDER BY {run} DESC) = 1)"
    )


def _latest_members(table: str, column: str, values: str) -> str:
    """The newest rows (per piece, of ``table``) whose ``column`` is one of the query ``values``: the
    pieces with any row holding one, then their newest rows (:func:`_latest`)."""
    return (
        f"(SELECT * FROM {_latest(table, f'SELECT piece_id FROM lake.store.{table} WHERE {column} IN ({values})')} "
        f"WHERE {column} IN ({values}))"
    )


def _undecided(con: Any, version: int) -> set[str]:
    """The analysed pieces without a cluster or a song group, when lake version ``version`` is that of
    the last decision: every piece analysed then was decided by it, and a decision is never removed,
    so only the pieces analysed since are looked up (the whole tables' anti-joins held 110 MB at
    176k pieces). :data:`_UNDECIDED_SQL` when the rows inserted since cannot be read."""
    import duckdb
    import pyarrow as pa

    try:
        now = _now(con)
        recent = (
            _arrow_column(
                con,
                f"SELECT DISTINCT piece_id FROM {_changes('insertions', 'piece_analysis', version, now)} "
                "WHERE piece_id IS NOT NULL",
            )
            if now > int(version)
            else pa.array([], pa.string())
        )
    except duckdb.Error:
        return {str(p) for p in _column(con, _UNDECIDED_SQL)}
    if not len(recent):
        return set()
    con.register("recent_ids", pa.table({"piece_id": recent}))
    try:
        mine = "piece_id IN (SELECT piece_id FROM recent_ids)"
        return {
            str(p)
            for p in _column(
                con,
                f"SELECT piece_id FROM recent_ids WHERE piece_id IN (SELECT piece_id FROM piece_analysis_t WHERE {mine}) "
                f"AND piece_id IN (SELECT piece_id FROM piece_facts_t WHERE {mine}) "
                f"AND (piece_id NOT IN (SELECT piece_id FROM lake.store.dedup WHERE {mine}) "
                f"OR piece_id NOT IN (SELECT piece_id FROM lake.store.song_groups WHERE {mine}))",
            )
        }
    finally:
        con.unregister("recent_ids")


def _arrow_column(con: Any, sql: str) -> Any:
    """The first column of ``sql`` as one Arrow array (no Python object per row)."""
    import pyarrow as pa

    col = con.execute(sql).to_arrow_table().column(0)
    return col.combine_chunks() if col.num_chunks else pa.array([], col.type)


def _pieces_of_tracks(keys: Any) -> list[str]:
    """The distinct piece ids of track keys ``piece:track`` (an Arrow string array)."""
    import pyarrow.compute as pc

    return [str(p) for p in pc.unique(pc.replace_substring_regex(keys, pattern=":[^:]*$", replacement="")).to_pylist()]


def _column(con: Any, sql: str, params: list[Any] | None = None) -> list[Any]:
    tbl = con.execute(sql, params or []).to_arrow_table()
    return tbl.column(0).to_pylist() if tbl.num_rows else []


def _last_decision(con: Any, params_json: str) -> dict[str, int] | None:
    """The totals and lake version of the last decision when it was made with these parameters
    (else None: decide every piece)."""
    row = con.execute(
        "SELECT params_json, lake_version, pieces, clusters, duplicate_pairs, song_groups, song_pairs "
        "FROM curate_decisions ORDER BY decided_at DESC, run_id DESC LIMIT 1"
    ).fetchone()
    if row is None or row[0] != params_json or row[1] is None:
        return None
    return dict(zip(("lake_version", *_SUMMARY_FIELDS), (int(x) for x in row[1:]), strict=True))


def _pieces_changed_since(con: Any, version: int) -> set[str] | None:
    """Pieces with a ``pieces`` row (an id, a Lakh md5, a lineage) that lake version ``version`` did
    not have; None when that version was expired (``lake maintain``): then every piece is decided."""
    import duckdb

    try:
        if not con.execute(
            f"SELECT count(*) FROM ducklake_snapshots('lake') WHERE snapshot_id = {int(version)}"
        ).fetchone()[0]:
            return None  # expired
        now = _now(con)
        if now <= int(version):
            return set()
        # ``pieces`` only grows (ingest appends): then the rows it did not have are those inserted
        # since, read from the files added since rather than by comparing the whole table at two
        # versions (which held 110 MB at 176k pieces)
        if not con.execute(f"SELECT count(*) FROM {_changes('deletions', 'pieces', version, now)}").fetchone()[0]:
            return {
                str(p)
                for p in _column(
                    con,
                    f"SELECT DISTINCT piece_id FROM {_changes('insertions', 'pieces', version, now)} "
                    "WHERE status = 'ok' AND piece_id IS NOT NULL",
                )
            }
        return {
            str(p)
            for p in _column(
                con,
                "SELECT DISTINCT piece_id FROM (SELECT piece_id, run_id, source_uri FROM lake.store.pieces "
                "WHERE status = 'ok' AND piece_id IS NOT NULL EXCEPT ALL SELECT piece_id, run_id, source_uri "
                f"FROM lake.store.pieces AT (VERSION => {int(version)}) WHERE status = 'ok' AND piece_id IS NOT NULL)",
            )
        }
    except duckdb.Error:
        return None


def _delta_decision(
    con: Any,
    fresh: set[str],
    undecided: set[str],
    analysed: set[str],
    new_dup_pairs: list[tuple[str, str, float]],
    matches: Any,  # songs.match_tracks_table
    threshold: float,
    song_threshold: float,
    cols: set[str],
    base: dict[str, int],
) -> dict[str, Any] | None:
    """Clusters and song groups after the last decision, deciding again only what ``fresh`` pieces touch.

    Two levels. Dedup: the fresh pieces, every piece they share a hash, a near-duplicate pair or a
    Lakh md5 with, and every member of those pieces' clusters: a set closed under dedup links, so
    :func:`_decide` over it gives what it gives over the lake. Song groups (which only merge while the
    parameters stay): union-find over those pieces, the other ends of every new track match, MSD /
    Mutopia id and lineage links of the fresh pieces, and one node per old group any of them was
    in; a group's name is the best of its old groups' names and its new members' keys. Every link
    between two older pieces was there at the last decision, so it lies inside one old group. The
    lake's totals are the last decision's with the old counts of what was decided again replaced.
    None: the lake is not as the argument needs (a link to a piece outside every old group); the
    caller then decides every piece.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    from corpus.curation import dedup, songs

    def reg(name: str, ids: set[str]) -> None:
        con.register(name, pa.table({"piece_id": pa.array(sorted(ids), pa.string())}))

    def ids_of(sql: str) -> set[str]:
        return {str(p) for p in _column(con, sql) if p is not None}

    # ---------------------------------------------------------------- dedup clusters
    reg("fresh_ids", fresh)
    try:
        linked = [
            "SELECT a.piece_id FROM piece_analysis_t a JOIN (SELECT content_hash FROM piece_analysis_t "
            f"WHERE piece_id IN (SELECT piece_id FROM fresh_ids) AND content_hash <> '{dedup.EMPTY_CONTENT_HASH}') h "
            "USING (content_hash)",
            "SELECT a.piece_id FROM piece_analysis_t a JOIN (SELECT content_hash_transposed FROM piece_analysis_t "
            "WHERE piece_id IN (SELECT piece_id FROM fresh_ids) "
            f"AND content_hash_transposed <> '{dedup.EMPTY_TRANSPOSED_HASH}') h USING (content_hash_transposed)",
            f"SELECT piece_b FROM dedup_pairs_t WHERE score >= {float(threshold)!r} "
            "AND piece_a IN (SELECT piece_id FROM fresh_ids)",
            f"SELECT piece_a FROM dedup_pairs_t WHERE score >= {float(threshold)!r} "
            "AND piece_b IN (SELECT piece_id FROM fresh_ids)",
        ]
        if "lmd_md5" in cols:
            linked.append(
                "SELECT p.piece_id FROM pieces p JOIN (SELECT lmd_md5 FROM pieces WHERE piece_id IN "
                "(SELECT piece_id FROM fresh_ids) AND lmd_md5 IS NOT NULL AND status = 'ok') m USING (lmd_md5) "
                "WHERE p.status = 'ok'"
            )
        d0 = ids_of(" UNION ".join(linked)) | fresh
        d0 |= {p for a, b, sc in new_dup_pairs if sc >= threshold for p in (a, b)}
    finally:
        con.unregister("fresh_ids")
    reg("d0_ids", d0 & analysed)
    try:
        in_d = (
            ids_of(
                "SELECT piece_id FROM d0_ids UNION SELECT piece_id FROM "
                + _latest_members(
                    "dedup",
                    "dedup_cluster",
                    "SELECT dedup_cluster FROM " + _latest("dedup", "SELECT piece_id FROM d0_ids"),
                )
            )
            & analysed
        )
    finally:
        con.unregister("d0_ids")
    got = _read_scope(con, sorted(in_d), cols, songs_too=False)
    pairs_d = [(a, b, sc) for a, b, sc in new_dup_pairs if a in in_d and b in in_d]
    after_d = _decide(got, pairs_d, [], threshold, song_threshold, songs_too=False)
    old_d = _decide(got, [], [], threshold, song_threshold, only_decided=True, songs_too=False)
    reps: dict[str, str] = after_d["reps"]
    was = dict(got["latest"])
    size: dict[str, int] = {}
    for c in reps.values():
        size[c] = size.get(c, 0) + 1

    # ---------------------------------------------------------------- song groups
    in_t = set(in_d) | set(matches.column("piece_a").to_pylist()) | set(matches.column("piece_b").to_pylist())
    # Song pairs are stored only in the transaction of a decision, which decides both their pieces, so a
    # piece that was never decided (new tonight, or analysed by a curate that stopped before deciding)
    # has none stored: only the fresh pieces decided before are looked up in song_pairs, whose scan
    # grows with the lake (2 s of a 176k nightly curate for 200 new pieces, none of them decided).
    stored_of = sorted(fresh - undecided)
    reg("fresh_ids", fresh)
    reg("stored_ids", set(stored_of))
    try:
        peers = ["SELECT piece_id FROM fresh_ids"]
        if stored_of:
            peers += [
                "SELECT piece_b FROM song_pairs_t WHERE piece_a IN (SELECT piece_id FROM stored_ids)",
                "SELECT piece_a FROM song_pairs_t WHERE piece_b IN (SELECT piece_id FROM stored_ids)",
            ]
        if "msd_ids" in cols:
            peers.append(
                "SELECT p.piece_id FROM (SELECT piece_id, unnest(msd_ids) AS m FROM pieces WHERE status = 'ok') p "
                "JOIN (SELECT unnest(msd_ids) AS m FROM pieces WHERE status = 'ok' "
                "AND piece_id IN (SELECT piece_id FROM fresh_ids)) f USING (m)"
            )
        if "mutopia_id" in cols:
            peers.append(
                "SELECT p.piece_id FROM pieces p JOIN (SELECT mutopia_id FROM pieces WHERE piece_id IN "
                "(SELECT piece_id FROM fresh_ids) AND mutopia_id IS NOT NULL AND status = 'ok') m USING (mutopia_id) "
                "WHERE p.status = 'ok'"
            )
        if "parent_piece_id" in cols:
            peers.append(
                "SELECT parent_piece_id FROM pieces WHERE piece_id IN (SELECT piece_id FROM fresh_ids) AND status = 'ok'"
            )
            peers.append(
                "SELECT piece_id FROM pieces WHERE parent_piece_id IN (SELECT piece_id FROM fresh_ids) AND status = 'ok'"
            )
        in_t |= ids_of(" UNION ".join(peers))
    finally:
        con.unregister("fresh_ids")
        con.unregister("stored_ids")
    in_t &= analysed
    reg("t_ids", in_t)
    in_t_sql = "(SELECT piece_id FROM t_ids)"
    try:
        old_group = {
            str(p): (str(g), str(j), t)
            for p, g, j, t in con.execute(
                f"SELECT piece_id, song_group, joined_by, threshold FROM {_latest('song_groups', in_t_sql[1:-1])}"
            ).fetchall()
        }
        old_size = {
            str(p): int(n)
            for p, n in con.execute(
                f"WITH t AS (SELECT piece_id, dedup_cluster FROM {_latest('dedup', in_t_sql[1:-1])}), "
                "m AS (SELECT piece_id, dedup_cluster FROM "
                f"{_latest_members('dedup', 'dedup_cluster', 'SELECT dedup_cluster FROM t')}) "
                "SELECT t.piece_id, c.n FROM t JOIN (SELECT dedup_cluster, count(*) AS n FROM m GROUP BY 1) c "
                "USING (dedup_cluster)"
            ).fetchall()
        }
        # the song pairs touching T, stored and new, at their best (containment, shared n-grams), in
        # DuckDB: a large group touches millions of stored pairs, which never become Python objects
        con.register("delta_matches", matches.select(["piece_a", "piece_b", "containment", "shared_ngrams"]))
        con.register("undecided_ids", pa.table({"piece_id": pa.array(sorted(undecided), pa.string())}))
        con.register("fresh_pair_ids", pa.table({"piece_id": pa.array(stored_of, pa.string())}))
        try:
            both_analysed = (
                "a IN (SELECT piece_id FROM piece_analysis_t JOIN piece_facts_t USING (piece_id)) "
                "AND b IN (SELECT piece_id FROM piece_analysis_t JOIN piece_facts_t USING (piece_id))"
            )
            # only the stored pairs of fresh pieces: a pair of two older pieces passed at the last
            # decision exactly when it passes now (no new match touches it), so it lies inside one old
            # group, leaves the song-pair total as it was, and its piece's "melody" kind is in the
            # joined_by kept below. (Stored pairs touching all of T grow with the lake: 314k for 6k
            # pieces of the 176k synthetic lake.)
            # (of those, the ones decided before: see stored_of)
            fresh_sql = "(SELECT piece_id FROM fresh_pair_ids)"
            stored = (
                (
                    "SELECT piece_a AS a, piece_b AS b, max(containment) AS c, max(shared_ngrams) AS n FROM song_pairs_t "
                    f"WHERE scheme = '{songs.TRACK_SCHEME}' AND (piece_a IN {fresh_sql} OR piece_b IN {fresh_sql}) "
                    "GROUP BY ALL"
                )
                if stored_of
                else "SELECT piece_a AS a, piece_b AS b, containment AS c, shared_ngrams AS n FROM delta_matches LIMIT 0"
            )
            got = con.execute(
                f"WITH st AS ({stored}), best AS (SELECT a, b, max({{'c': c, 'n': n}}) AS m, max(c) FILTER (WHERE s) AS sc, "
                "max(n) FILTER (WHERE s) AS sn FROM (SELECT *, true AS s FROM st UNION ALL SELECT piece_a, piece_b, "
                "containment, shared_ngrams, false FROM delta_matches) GROUP BY a, b), "
                f"flagged AS (SELECT a, b, {_passes_sql('m.c', 'm.n', song_threshold)} AS now, sc IS NOT NULL "
                "AND a NOT IN (SELECT piece_id FROM undecided_ids) AND b NOT IN (SELECT piece_id FROM undecided_ids) "
                f"AND {_passes_sql('sc', 'sn', song_threshold)} AS before FROM best) "
                f"SELECT a, b, now, before FROM flagged WHERE (now OR before) AND {both_analysed}"
            ).to_arrow_table()
            # passing now (stored or new, at its best); passing at the last decision (stored, both decided then)
            before = int(pc.sum(got.column("before").cast("int64")).as_py() or 0)
            passing = got.filter(got.column("now")).select(["a", "b"])
            del got
        finally:
            con.unregister("delta_matches")
            con.unregister("undecided_ids")
            con.unregister("fresh_pair_ids")
        holders: list[tuple[str, str]] = []  # (key, piece): every holder of a key a piece of T holds
        keyed = []
        if "msd_ids" in cols:
            keyed.append(
                "SELECT 'msd:' || unnest(msd_ids) AS key, piece_id FROM pieces WHERE status = 'ok' AND piece_id IS NOT NULL"
            )
        if "mutopia_id" in cols:
            keyed.append(
                "SELECT 'mutopia:' || mutopia_id, piece_id FROM pieces WHERE status = 'ok' AND piece_id IS NOT NULL "
                "AND mutopia_id IS NOT NULL"
            )
        if "lmd_md5" in cols:
            keyed.append(
                "SELECT 'lmd_md5:' || lmd_md5, piece_id FROM pieces WHERE status = 'ok' AND piece_id IS NOT NULL "
                "AND lmd_md5 IS NOT NULL"
            )
        if keyed:
            holders = [
                (str(k), str(p))
                for k, p in con.execute(
                    f"WITH k AS ({' UNION '.join(keyed)}) SELECT DISTINCT key, piece_id FROM k "
                    f"WHERE key IN (SELECT key FROM k WHERE piece_id IN {in_t_sql}) ORDER BY 1, 2"
                ).fetchall()
                if str(p) in analysed
            ]
        lineage = (
            [
                (str(c), str(par))
                for c, par in con.execute(
                    "SELECT DISTINCT piece_id, parent_piece_id FROM pieces WHERE status = 'ok' AND piece_id IS NOT NULL "
                    f"AND parent_piece_id IS NOT NULL AND (piece_id IN {in_t_sql} OR parent_piece_id IN {in_t_sql})"
                ).fetchall()
                if str(c) in analysed and str(par) in analysed and c != par
            ]
            if "parent_piece_id" in cols
            else []
        )
    finally:
        con.unregister("t_ids")
    # the passing pairs as components over the pieces they hold: one union per piece, not per pair
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    in_pairs = pc.unique(pa.chunked_array([*passing.column("a").chunks, *passing.column("b").chunks], pa.string()))
    melody_pieces = [str(p) for p in in_pairs.to_pylist()]
    n_pp = len(melody_pieces)
    ca, cb = (pc.index_in(passing.column(c), value_set=in_pairs).to_numpy() for c in ("a", "b"))
    pair_label = (
        connected_components(coo_matrix((np.ones(len(ca)), (ca, cb)), shape=(n_pp, n_pp)), directed=False)[1]
        if n_pp
        else np.zeros(0, np.int64)
    )
    n_passing = passing.num_rows
    del passing, ca, cb
    outside = (set(melody_pieces) | {p for _, p in holders} | {p for e in lineage for p in e}) - in_t
    if outside:
        reg("out_ids", outside)
        try:
            out_group = {
                str(p): str(g)
                for p, g in con.execute(
                    f"SELECT piece_id, song_group FROM {_latest('song_groups', 'SELECT piece_id FROM out_ids')}"
                ).fetchall()
            }
        finally:
            con.unregister("out_ids")
        if set(out_group) != outside:
            return None
    else:
        out_group = {}

    # how each piece joined can only gain kinds (clusters, matches and shared keys only grow while the
    # parameters stay), so an older piece starts from the kind it joined by (its melody matches with
    # other older pieces are not read again)
    kinds: dict[str, set[str]] = {
        p: ({old_group[p][1]} if p in old_group and p not in fresh and old_group[p][1] != "self" else set())
        for p in in_t
    }
    parent: dict[tuple[str, str], tuple[str, str]] = {}

    def node(p: str) -> tuple[str, str]:
        return ("p", p) if p in in_t else ("g", out_group[p])

    def find(x: tuple[str, str]) -> tuple[str, str]:
        parent.setdefault(x, x)
        return songs.root_of(parent, x)

    def union(x: tuple[str, str], y: tuple[str, str]) -> None:
        rx, ry = find(x), find(y)
        if rx != ry:
            parent[max(rx, ry)] = min(rx, ry)

    def note(p: str, kind: str) -> None:
        if p in kinds:
            kinds[p].add(kind)

    for p in in_t:
        find(("p", p))
        if p in old_group:
            union(("p", p), ("g", old_group[p][0]))
        elif p not in fresh:
            return None  # an older piece without a group: decide every piece
        if p in reps:
            union(("p", p), ("p", reps[p]))
            if size[reps[p]] >= 2:
                note(p, "dedup")
        elif old_size.get(p, 1) >= 2:
            note(p, "dedup")
    first_of: dict[int, str] = {}
    for p, label in zip(melody_pieces, pair_label.tolist(), strict=True):
        union(node(first_of.setdefault(label, p)), node(p))
        note(p, "melody")
    by_key: dict[str, list[str]] = {}
    for k, p in holders:
        by_key.setdefault(k, []).append(p)
    own_keys: dict[str, list[str]] = {}
    for k, ps in by_key.items():
        kind = k.split(":", 1)[0]
        for p in ps:
            if kind != "lmd_md5":
                own_keys.setdefault(p, []).append(k)
            if len(ps) >= 2:
                union(node(ps[0]), node(p))
                note(p, kind)
    for c, par in lineage:
        union(node(c), node(par))
        note(c, "lineage")
        note(par, "lineage")

    def rank(key: str) -> tuple[int, str]:
        return ({"msd": 0, "mutopia": 1}.get(key.split(":", 1)[0], 2), key)

    name: dict[tuple[str, str], str] = {}
    for x in list(parent):
        if x[0] == "g":
            cand = x[1] if x[1].startswith(("msd:", "mutopia:")) else f"piece:{x[1]}"
        else:
            cand = min([*own_keys.get(x[1], []), f"piece:{x[1]}"], key=rank)
        root = find(x)
        if root not in name or rank(cand) < rank(name[root]):
            name[root] = cand
    strength = {kind: n for n, kind in enumerate(songs.JOIN_KINDS)}
    song_rows = []
    for p in sorted(in_t):
        g = songs._group_id(name[find(("p", p))])
        j = min(kinds[p], key=lambda k: strength.get(k, 99)) if kinds[p] else "self"
        if old_group.get(p) != (g, j, song_threshold):
            song_rows.append((p, g, j))
    old_groups = {x[1] for x in parent if x[0] == "g"}
    renamed = {
        g: songs._group_id(name[find(("g", g))]) for g in old_groups if songs._group_id(name[find(("g", g))]) != g
    }
    if renamed:
        con.register("renamed_groups", pa.table({"song_group": pa.array(sorted(renamed), pa.string())}))
        try:
            members = con.execute(
                "SELECT piece_id, song_group, joined_by FROM "
                + _latest_members("song_groups", "song_group", "SELECT song_group FROM renamed_groups")
            ).fetchall()
        finally:
            con.unregister("renamed_groups")
        song_rows += [(str(p), renamed[str(g)], str(j)) for p, g, j in members if str(p) not in in_t]
    n_components = len({find(x) for x in parent})
    totals = {
        "pieces": len(analysed),
        "clusters": base["clusters"] - old_d["clusters"] + after_d["clusters"],
        "duplicate_pairs": base["duplicate_pairs"] - old_d["duplicate_pairs"] + after_d["duplicate_pairs"],
        "song_groups": base["song_groups"] - len(old_groups) + n_components,
        "song_pairs": base["song_pairs"] - before + n_passing,
    }
    return {
        "scope": "delta",
        "totals": totals,
        "redecided": len(in_t) + sum(1 for p, _, _ in song_rows if p not in in_t),
        "dedup_rows": [(p, c) for p, c in sorted(reps.items()) if was.get(p) != c],
        "song_rows": song_rows,
    }


def _passes_sql(containment: str, shared: str, threshold: float) -> str:
    """:func:`corpus.curation.songs.passes` as a SQL condition on two columns."""
    from corpus.curation import songs

    return (
        f"({shared} >= {int(songs.MIN_SHARED)} AND ({containment} >= {float(threshold)!r} OR "
        f"({shared} >= {int(songs.STRONG_SHARED)} AND {containment} >= {float(songs.STRONG_CONTAINMENT)!r})))"
    )


def _read_scope(con: Any, scope: list[str] | None, cols: set[str], songs_too: bool = True) -> dict[str, Any]:
    """What a decision over ``scope`` (None: every piece) reads: hashes, stored pairs, Lakh md5s,
    external ids, lineage and the current assignments, restricted to pieces of the scope.

    The stored pairs come as NumPy arrays of piece codes (positions in ``ids``), one row per pair
    (its best score), never as a Python object per pair: a Lakh-sized lake stores millions."""
    import pyarrow as pa

    from corpus.curation import songs

    if scope is not None:
        con.register("scope_ids", pa.table({"piece_id": pa.array(scope, pa.string())}))

    def within(col: str) -> str:
        return "" if scope is None else f" AND {col} IN (SELECT piece_id FROM scope_ids)"

    try:
        tbl = con.execute(
            "SELECT a.piece_id, a.content_hash, a.content_hash_transposed, f.n_notes, f.duration_quarters "
            "FROM piece_analysis_t a JOIN piece_facts_t f USING (piece_id) WHERE true"
            + within("a.piece_id")
            + " ORDER BY a.piece_id"
        ).fetchnumpy()
        out: dict[str, Any] = {
            "ids": [str(x) for x in tbl["piece_id"]],
            "hashes": [str(h) for h in tbl["content_hash"]],
            "t_hashes": [str(h) for h in tbl["content_hash_transposed"]],
            "n_notes": [int(n) for n in tbl["n_notes"]],
            "lengths": [float(x) for x in tbl["duration_quarters"]],
        }
        del tbl
        con.register(
            "scope_codes",
            pa.table(
                {"piece_id": pa.array(out["ids"], pa.string()), "code": pa.array(range(len(out["ids"])), pa.int32())}
            ),
        )
        try:
            # the pairs' GROUP BY over millions of rows spills past this (the connection's temp_directory)
            con.execute(f"SET memory_limit = '{DECIDE_MEMORY_LIMIT}'")
            near = con.execute(
                "SELECT ca.code AS a, cb.code AS b, max(score) AS s FROM dedup_pairs_t "
                "JOIN scope_codes ca ON ca.piece_id = piece_a JOIN scope_codes cb ON cb.piece_id = piece_b "
                "GROUP BY ALL"
            ).fetchnumpy()
            out["stored"] = (
                np.asarray(near["a"], np.int32),
                np.asarray(near["b"], np.int32),
                np.asarray(near["s"], np.float64),
            )
            del near
            # (not read for the dedup level of a delta decision, ``songs_too=False``: the join scans every
            # stored song pair, 1 s at 176k)
            sp = (
                con.execute(
                    "SELECT ca.code AS a, cb.code AS b, max(containment) AS c, max(shared_ngrams) AS n FROM song_pairs_t "
                    "JOIN scope_codes ca ON ca.piece_id = piece_a JOIN scope_codes cb ON cb.piece_id = piece_b "
                    "WHERE scheme = ? GROUP BY ALL",
                    [songs.TRACK_SCHEME],
                ).fetchnumpy()
                if songs_too
                else {k: np.zeros(0) for k in "abcn"}
            )
            out["stored_songs"] = (
                np.asarray(sp["a"], np.int32),
                np.asarray(sp["b"], np.int32),
                np.asarray(sp["c"], np.float64),
                np.asarray(sp["n"], np.int32),
            )
            del sp
        finally:
            con.unregister("scope_codes")
            with contextlib.suppress(Exception):
                con.execute("RESET memory_limit")
        out["lmd"] = (
            con.execute(
                "SELECT DISTINCT piece_id, lmd_md5 FROM pieces WHERE lmd_md5 IS NOT NULL AND piece_id IS NOT NULL "
                "AND status = 'ok'" + within("piece_id")
            ).fetchall()
            if "lmd_md5" in cols
            else []
        )
        out["ext"] = con.execute(
            "SELECT * FROM (SELECT piece_id, "
            + (
                "list_sort(list_distinct(flatten(list(coalesce(msd_ids, []::VARCHAR[]))))) AS m, "
                if "msd_ids" in cols
                else "[]::VARCHAR[] AS m, "
            )
            + (
                "list_distinct(list(mutopia_id) FILTER (WHERE mutopia_id IS NOT NULL)) AS u, "
                if "mutopia_id" in cols
                else "[]::VARCHAR[] AS u, "
            )
            + (
                "list_distinct(list(parent_piece_id) FILTER (WHERE parent_piece_id IS NOT NULL)) AS l "
                if "parent_piece_id" in cols
                else "[]::VARCHAR[] AS l "
            )
            + "FROM pieces WHERE status = 'ok' AND piece_id IS NOT NULL"
            + within("piece_id")
            + " GROUP BY piece_id) WHERE len(m) > 0 OR len(u) > 0 OR len(l) > 0"  # the pieces without any: no link
        ).fetchall()
        dedup_rows, song_rows = (
            ("dedup_latest", "song_groups_latest")
            if scope is None
            else (
                _latest("dedup", "SELECT piece_id FROM scope_ids"),
                _latest("song_groups", "SELECT piece_id FROM scope_ids"),
            )
        )
        out["latest"] = con.execute(f"SELECT piece_id, dedup_cluster FROM {dedup_rows} ORDER BY 1").fetchall()
        out["latest_songs"] = con.execute(
            f"SELECT piece_id, song_group, joined_by, threshold FROM {song_rows} ORDER BY 1"
        ).fetchall()
    finally:
        if scope is not None:
            con.unregister("scope_ids")
    return out


DECIDE_MEMORY_LIMIT = os.environ.get("MIDICORPUS_DECIDE_MEMORY", "1GB")  # DuckDB's, reading the stored pairs


def _codes(row_of: dict[str, int], a: Any, b: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Codes of the pieces ``a``, ``b`` (strings) in ``row_of``; a mask of the pairs with both known."""
    ca = np.fromiter((row_of.get(x, -1) for x in a), np.int64, len(a))
    cb = np.fromiter((row_of.get(x, -1) for x in b), np.int64, len(b))
    return ca, cb, (ca >= 0) & (cb >= 0)


def _codes_in(col: Any, known: Any) -> np.ndarray:
    """The position in ``known`` (an Arrow string array) of each value of ``col`` (strings, or a
    dictionary array: then only its dictionary is looked up), int32, -1 where absent."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_dictionary(col.type):
        arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        at = pc.index_in(arr.dictionary, value_set=known).fill_null(-1).to_numpy(zero_copy_only=False)
        return at.astype(np.int32)[arr.indices.to_numpy(zero_copy_only=False)]
    return pc.index_in(col, value_set=known).fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int32)


def _decide(
    got: dict[str, Any],
    new_dup_pairs: list[tuple[str, str, float]] | _DupPairs,
    matches: Any,  # songs.match_tracks_table
    threshold: float,
    song_threshold: float,
    only_decided: bool = False,
    songs_too: bool = True,
) -> dict[str, Any]:
    """Clusters and song groups of the pieces in ``got`` (a closed set), from its stored pairs and the new ones.

    ``only_decided``: the decision as it stood before this run (the pieces that had a cluster, the
    stored pairs only), whose counts the lake's totals drop when the new decision replaces it.
    Pairs stay NumPy arrays of piece codes (:mod:`corpus.curation.decide`).
    """
    from corpus.curation import decide, songs

    all_ids = got["ids"]
    code = np.arange(len(all_ids))  # code in got -> code in the decided set (-1: left out)
    keep = np.arange(len(all_ids))
    if only_decided:
        had = {p for p, _ in got["latest"]}
        keep = np.asarray([i for i, p in enumerate(all_ids) if p in had], np.int64)
        code = np.full(len(all_ids), -1, np.int64)
        code[keep] = np.arange(len(keep))
    ids = [all_ids[i] for i in keep.tolist()]
    n = len(ids)
    row_of = {p: i for i, p in enumerate(ids)}

    def recode(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ra, rb = code[a], code[b]
        return ra, rb, (ra >= 0) & (rb >= 0)

    # near-duplicate pairs: stored and new, one per unordered pair at its best score
    sa, sb, ok = recode(got["stored"][0], got["stored"][1])
    near_a, near_b, near_s = [sa[ok]], [sb[ok]], [got["stored"][2][ok]]
    if isinstance(new_dup_pairs, _DupPairs) and len(new_dup_pairs):
        import pyarrow as pa
        import pyarrow.compute as pc

        # each index key's code here (-1: not decided): no Python string per pair
        at = (
            pc.index_in(new_dup_pairs.keys, value_set=pa.array(ids, pa.string()))
            .fill_null(-1)
            .to_numpy(zero_copy_only=False)
            .astype(np.int64)
        )
        na, nb = at[new_dup_pairs.a], at[new_dup_pairs.b]
        ok = (na >= 0) & (nb >= 0)
        near_a.append(na[ok])
        near_b.append(nb[ok])
        near_s.append(new_dup_pairs.s[ok])
        del at, na, nb
    elif new_dup_pairs:
        na, nb, ok = _codes(row_of, [p[0] for p in new_dup_pairs], [p[1] for p in new_dup_pairs])
        near_a.append(na[ok])
        near_b.append(nb[ok])
        near_s.append(np.asarray([p[2] for p in new_dup_pairs], np.float64)[ok])
    a, b = np.concatenate(near_a), np.concatenate(near_b)
    a, b, s, _ = decide.best_pairs(np.minimum(a, b), np.maximum(a, b), np.concatenate(near_s))
    n_notes = np.asarray([got["n_notes"][i] for i in keep.tolist()], np.int64)
    lengths = np.asarray([got["lengths"][i] for i in keep.tolist()], np.float64)
    rep, n_dup_pairs = decide.cluster_codes(
        [got["hashes"][i] for i in keep.tolist()],
        [got["t_hashes"][i] for i in keep.tolist()],
        n_notes,
        lengths,
        a,
        b,
        s,
        threshold,
    )
    by_md5: dict[str, list[int]] = {}
    for pid, md5 in got["lmd"]:
        if pid in row_of:
            by_md5.setdefault(md5, []).append(row_of[pid])
    rep = decide.merge_codes(rep, n_notes, by_md5.values())
    reps = dict(zip(ids, (ids[r] for r in rep.tolist()), strict=True))
    n_clusters = len(np.unique(rep))
    if not songs_too:
        return {"reps": reps, "clusters": n_clusters, "duplicate_pairs": n_dup_pairs}

    # --- song groups: dedup clusters, verified track matches, lineage, Lakh md5, MSD / Mutopia ids
    ga, gb, cont, shared = got["stored_songs"]  # one row per pair already (grouped in SQL)
    if only_decided:
        ga, gb, ok = recode(ga, gb)
        ga, gb, cont, shared = ga[ok], gb[ok], cont[ok], shared[ok]
    if matches.num_rows:  # codes from Arrow: no Python string per match (a first curate has millions)
        import pyarrow as pa
        import pyarrow.compute as pc

        known = pa.array(ids, pa.string())
        ma, mb = (_codes_in(matches.column(c), known) for c in ("piece_a", "piece_b"))
        ok = (ma >= 0) & (mb >= 0)
        ga, gb, cont, shared_or_none = decide.best_pairs(
            np.concatenate([ga, ma[ok]]),
            np.concatenate([gb, mb[ok]]),
            np.concatenate([cont, matches.column("containment").to_numpy().astype(np.float64)[ok]]),
            np.concatenate([shared, matches.column("shared_ngrams").to_numpy().astype(np.int32)[ok]]),
        )
        shared = np.asarray(shared_or_none)
    passing = (shared >= songs.MIN_SHARED) & (
        (cont >= song_threshold) | ((shared >= songs.STRONG_SHARED) & (cont >= songs.STRONG_CONTAINMENT))
    )
    pa_, pb_ = ga[passing], gb[passing]
    del ga, gb, cont, shared
    idx = np.arange(n)
    links: list[tuple[np.ndarray, np.ndarray, str]] = [
        (idx, rep, "dedup"),
        (pa_, pb_, "melody"),
    ]
    md5_a = [g[0] for g in by_md5.values() for _ in g[1:]]
    md5_b = [p for g in by_md5.values() for p in g[1:]]
    links.append((np.asarray(md5_b, np.int64), np.asarray(md5_a, np.int64), "lmd_md5"))
    keys: dict[int, list[str]] = {}
    lin_a: list[int] = []
    lin_b: list[int] = []
    for pid, msd_ids, mutopia_ids, parents in got["ext"]:
        if pid not in row_of:
            continue
        keys[row_of[pid]] = [f"msd:{m}" for m in msd_ids or []] + [f"mutopia:{m}" for m in mutopia_ids or []]
        for parent in parents or []:
            if parent in row_of:
                lin_a.append(row_of[pid])
                lin_b.append(row_of[parent])
    links.append((np.asarray(lin_a, np.int64), np.asarray(lin_b, np.int64), "lineage"))
    group, joined_by = decide.song_group_codes(ids, links, keys)
    groups = songs.SongGroups(
        group_of=dict(zip(ids, group, strict=True)), joined_by=dict(zip(ids, joined_by, strict=True))
    )
    return {
        "reps": reps,
        "groups": groups,
        "pieces": n,
        "clusters": n_clusters,
        "duplicate_pairs": n_dup_pairs,
        "song_groups": groups.n_groups,
        "song_pairs": int(passing.sum()),
    }


def save_index(lake: Lake, name: str, index: Any, config: dict[str, object]) -> None:
    """A faiss index under ``index/<name>``, swapped in atomically (:func:`_stage_index`, then
    :func:`_publish_index`)."""
    _publish_index(lake, name, _stage_index(lake, name, index, config))


def _stage_index(lake: Lake, name: str, index: Any, config: dict[str, object]) -> Path:
    """Write ``index`` where :func:`_publish_index` will take it from (locally a hidden folder beside
    ``index/<name>``, for an object store a local temporary folder); nothing reads it yet. Curate
    stages each index as soon as it is updated and drops it from memory, so the driver never holds
    both indexes at once; they are published after the transaction that stores their pairs."""
    extra = {k: v for k, v in index.meta.items() if k in ("pairs_stored", "trained_n", "lake_version")}
    if lake.remote:
        tmp = Path(tempfile.mkdtemp(prefix="midicorpus-index-")) / name
    else:
        tmp = lake.root / "index" / f".{name}-{uuid.uuid4().hex[:8]}"
    index.save(tmp, config, extra)
    return tmp


def _discard_staged(lake: Lake, staged: Path) -> None:
    shutil.rmtree(staged.parent if lake.remote else staged, ignore_errors=True)


def _publish_index(lake: Lake, name: str, staged: Path) -> None:
    """Make the index staged at ``staged`` the one under ``index/<name>``.

    Locally: renamed into ``index/<name>``. On an object store: uploaded to ``index/<name>-<id>/``,
    then the pointer ``index/<name>.json`` names it (the switch), then the previous folder is deleted.
    """
    if lake.remote:
        folder = f"{name}-{uuid.uuid4().hex[:12]}"
        previous = _index_pointer(lake, name)
        try:
            lake.upload_dir(staged, f"index/{folder}")
            lake.write_bytes(f"index/{name}.json", json.dumps({"dir": f"index/{folder}"}).encode())
        finally:
            _discard_staged(lake, staged)
        if previous:
            lake.remove(previous)
        return
    target = lake.root / "index" / name
    old = lake.root / "index" / f".old-{uuid.uuid4().hex[:8]}"
    if target.exists():
        target.rename(old)
    staged.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def _index_pointer(lake: Lake, name: str) -> str | None:
    try:
        return str(json.loads(lake.read_bytes(f"index/{name}.json"))["dir"])
    except FileNotFoundError:
        return None


def has_neardup_index(lake: Lake) -> bool:
    if lake.remote:
        return lake.file_exists("index/neardup.json")
    return (lake.root / "index" / "neardup").exists()


def load_index(lake: Lake, name: str, config: dict[str, object] | None = None) -> Any:
    """The index ``name`` that ``curate`` saved last, or None before the first curate."""
    from corpus.curation.dedup import NearDupIndex

    if not lake.remote:
        path = lake.root / "index" / name
        return NearDupIndex.load(path, config) if path.exists() else None
    rel = _index_pointer(lake, name)
    if rel is None:
        return None
    with tempfile.TemporaryDirectory(prefix="midicorpus-index-") as tmp:
        return NearDupIndex.load(lake.download(rel, Path(tmp) / name), config)


def load_neardup_index(lake: Lake) -> Any:
    """The near-duplicate (piece) index ``curate`` saved last, or None before the first curate."""
    return load_index(lake, "neardup")
