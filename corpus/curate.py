"""The curate stage: texture, key and duplicate clusters for pieces not yet curated.

Per piece (in the engine's workers): texture measures per track and per piece
(:mod:`corpus.curation.texture`), the key from a duration-weighted pitch-class histogram
(:mod:`corpus.curation.key`), windowed keys, the declared key signature, and the dedup
signature (content hashes and the near-duplicate vector, :mod:`corpus.curation.dedup`).
These rows are appended once per piece (``piece_analysis``, ``track_texture``).

Then, over the whole lake (in the driver): pieces join duplicate clusters by content hash,
transposition-invariant hash, near-duplicate vectors above the threshold (faiss), and the
same Lakh md5 (an LPD piece and the MIDI it came from). Every curate run writes the complete
assignment as a new version of ``dedup``; the ``features`` view shows the latest. The
faiss index is saved under ``index/neardup`` for ``midicorpus similar``.

Key backend (``key_backend``): ``"ours"`` (default) is :func:`corpus.curation.key.estimate_key`,
the fast emulation of music21; ``"music21"`` runs music21's own ``analyze('key')``
(:func:`corpus.curation.key.estimate_key_music21`, about 2.5 s per file) for the whole-piece key
(``key_tonic``, ``key_tonic_pc``, ``key_mode``, ``key_correlation``, ``key_confidence``). The
windowed keys and ``key_krumhansl`` always come from ours. The backend that produced the key is
the row's ``key_backend`` (NULL when the piece has no key); when music21 raises on a piece, ours
is used for it and recorded as such (counted in ``CurateSummary.key_fallbacks``). The backend
applies to the pieces analysed in that run: already curated pieces are not analysed again.

Melody extraction (``extract_melodies=True``, :mod:`corpus.curation.melody`): after the pending
pieces are analysed, every monophonic pitched track (>= ``min_melody_notes`` notes) of a
curated polyphonic piece is ingested as a derived piece (source ``melody``, lineage in
``pieces.parent_piece_id`` / ``parent_track``); the new pieces are then analysed in the same
run, before the duplicate clusters are recomputed over everything.
"""

from __future__ import annotations

import json
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
CURATE_VERSION = "curate-v1"
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
    to_analyse: int = 0  # pieces to analyse in this run (a progress total)

    def line(self) -> str:
        if self.decision_current:
            return (
                f"nothing new: {self.pieces} pieces curated, in {self.clusters} dedup clusters and "
                f"{self.song_groups} song groups (as decided by the last run)"
            )
        s = (
            f"{self.analysed} pieces analysed ({self.failed} failed); "
            f"{self.pieces} pieces in {self.clusters} dedup clusters ({self.duplicate_pairs} duplicate pairs) "
            f"and {self.song_groups} song groups ({self.song_pairs} melody matches)"
        )
        if self.signed:
            s += f"; track signatures added to {self.signed} pieces curated before song-v1"
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

    Returns ``{"row": piece_analysis row, "tracks": track_texture rows, "track_signatures": rows}``, plus
    ``"key_fallback": message`` when the music21 backend raised and our key was used instead.
    """
    import symusic

    from corpus.curation import dedup, key, songs, texture
    from corpus.parse import smf_bytes

    _check_key_backend(key_backend)
    smf = smf_bytes(data)  # checked at ingest
    score = symusic.Score.from_midi(smf)
    piece_tex, track_tex = texture.piece_texture(score)
    pitches, _, weights = key.note_weights(score)  # once, for both profiles
    est = key.estimate_key_from_weights(pitches, weights, KEY_PROFILE)
    backend = "ours" if est is not None else None
    fallback = None
    if est is not None and key_backend == "music21":
        try:
            est = key.estimate_key_music21(smf, KEY_PROFILE)
            backend = "music21"
        except Exception as exc:  # noqa: BLE001 - music21 refuses some files symusic reads; ours is kept
            fallback = f"{type(exc).__name__}: {exc}"
    alt = key.estimate_key_from_weights(pitches, weights, "krumhansl") if est is not None else None
    declared = key.declared_key(score)
    windows = key.windowed_keys(score, WINDOW_BARS, KEY_PROFILE) if est is not None else []
    sig = dedup.signature(score)
    track_sigs = songs.track_signatures(score, piece_id)
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
        "key_profile": KEY_PROFILE if est else None,
        "key_backend": backend,
        "key_krumhansl": alt.name if alt else None,
        "key_declared": f"{declared.tonic} {declared.mode}" if declared else None,
        "key_windows": [w.key.name if w.key else None for w in windows],
        "key_n_windows_differing": sum(1 for w in windows if w.key and est and w.key.name != est.name),
        "content_hash": sig.content_hash,
        "content_hash_transposed": sig.content_hash_transposed,
        "dedup_vector": sig.vector.astype(np.float32).tolist(),
        "curate_version": CURATE_VERSION,
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
        }
        for t in track_tex
    ]
    out: dict[str, Any] = {"row": row, "tracks": tracks, "track_signatures": track_sigs}
    if fallback is not None:
        out["key_fallback"] = fallback
    return out


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
    """Analyse every parsed piece without a ``piece_analysis`` row or a curate reject."""
    con = lake.connect()
    try:
        todo = [
            r[0]
            for r in con.execute(
                "SELECT f.piece_id FROM piece_facts_t f ANTI JOIN piece_analysis_t a USING (piece_id) "
                "ANTI JOIN (SELECT piece_id FROM rejects WHERE stage = 'curate') r USING (piece_id) ORDER BY 1"
            ).fetchall()
        ]
    finally:
        con.close()
    s.to_analyse += len(todo)
    if progress:
        progress(s)

    rows: list[dict[str, Any]] = []
    tracks: list[dict[str, Any]] = []
    sigs: list[dict[str, Any]] = []
    rejects: list[dict[str, Any]] = []

    def flush() -> None:
        if not (rows or rejects):
            return
        with lake.transaction({"command": "curate", "run_id": run_id}) as tx:
            tx.write("piece_analysis", rows)
            tx.write("track_texture", tracks)
            tx.write("track_signatures", sigs)
            if rejects:
                tx.write("rejects", rejects, {"stage": "curate"})
        rows.clear()
        tracks.clear()
        sigs.clear()
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
                sigs.extend(out[1]["track_signatures"])
                s.analysed += 1
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


def _fetch_vectors(con: Any, sql: str, ids: list[str], dim: int) -> np.ndarray:
    """Rows of ``sql`` (``key``, ``vector``) for the keys ``ids``, as a matrix in that order."""
    import pyarrow as pa

    if not ids:
        return np.zeros((0, dim), np.float32)
    con.register("wanted_keys", pa.table({"key": pa.array(ids, pa.string()), "ord": pa.array(range(len(ids)))}))
    try:
        tbl = con.execute(
            f"SELECT w.ord, v.vector FROM ({sql}) v JOIN wanted_keys w USING (key) ORDER BY w.ord"
        ).to_arrow_table()
    finally:
        con.unregister("wanted_keys")
    if tbl.num_rows != len(ids):
        raise RuntimeError(f"found {tbl.num_rows} vectors for {len(ids)} keys")
    flat = tbl.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return np.ascontiguousarray(flat.astype(np.float32).reshape(len(ids), dim))


def _open_index(lake: Lake, name: str, config: dict[str, object], known: set[str]) -> Any:
    """The saved index ``name`` when it is usable for incremental work, else None (rebuild).

    Usable: built with this config by a run that stored the pairs of every piece it holds
    (``pairs_stored``), holding no key the tables do not know.
    """
    try:
        index = load_index(lake, name, config)
    except (ValueError, OSError):  # another scheme or an unreadable folder: rebuilt from the tables
        return None
    if index is None or not index.meta.get("pairs_stored") or not set(index.piece_ids) <= known:
        return None
    return index


def _update_index(index: Any, known: list[str], vectors: Any) -> tuple[Any, list[str]]:
    """Add the keys of ``known`` that ``index`` lacks (``vectors(keys)`` gives their matrix); (index, new keys).

    Without an index, or once the lake has grown past twice what an IVF index was trained on,
    the index is built anew from every key (then every key is new: its pairs are collected again).
    """
    from corpus.curation.dedup import NearDupIndex

    if index is not None and index.kind == "ivf" and len(known) > 2 * int(index.meta.get("trained_n", len(index)) or 1):
        index = None
    if index is None:
        index = NearDupIndex.build(known, vectors(known))
        index.meta = {"trained_n": len(known)}
        return index, list(known)
    have = set(index.piece_ids)
    new = [k for k in known if k not in have]
    if new:
        index.add(new, vectors(new))
    return index, new


def _recluster(
    lake: Lake, run_id: str, threshold: float, s: CurateSummary, song_threshold: float = DEFAULT_SONG_THRESHOLD
) -> None:
    """Dedup clusters and song groups over the lake, with work in proportion to what is new.

    The two faiss indexes (pieces, identity tracks) are kept under ``index/``; each run adds the
    new pieces and tracks, queries only those, stores the pairs it finds (``dedup_pairs``,
    ``song_pairs``), then decides clusters and groups from every stored pair (union-find in the
    driver). Assignments are written when they changed.
    """
    from corpus.curation import dedup, songs

    if threshold < DEDUP_PAIR_FLOOR:
        raise ValueError(
            f"dedup threshold must be >= {DEDUP_PAIR_FLOOR} (pairs below it are not stored), got {threshold!r}"
        )
    song_threshold = songs.check_threshold(song_threshold)
    con = lake.connect()
    try:
        tbl = con.execute(
            "SELECT a.piece_id, a.content_hash, a.content_hash_transposed, f.n_notes, f.duration_quarters "
            "FROM piece_analysis_t a JOIN piece_facts_t f USING (piece_id) ORDER BY a.piece_id"
        ).fetchnumpy()
        ids = [str(x) for x in tbl["piece_id"]]
        s.pieces = len(ids)
        if not ids:
            return
        known = set(ids)
        # --- piece index: new pieces against everything
        pidx, new_pieces = _update_index(
            _open_index(lake, "neardup", dedup.VECTOR_CONFIG, known),
            ids,
            lambda keys: _fetch_vectors(
                con, "SELECT piece_id AS key, dedup_vector AS vector FROM piece_analysis_t", keys, dedup.VECTOR_DIM
            ),
        )
        row_of = {p: i for i, p in enumerate(ids)}
        new_dup_pairs = [
            (pidx.piece_ids[i], pidx.piece_ids[j], sc)
            for i, j, sc in pidx.pairs_of([pidx._row[p] for p in new_pieces], DEDUP_PAIR_FLOOR)
        ]
        stored = (
            con.execute("SELECT piece_a, piece_b, max(score) FROM dedup_pairs_t GROUP BY ALL").fetchall()
            if new_pieces != ids
            else []
        )
        # --- track index: new identity tracks against every identity track
        track_keys = [
            r[0]
            for r in con.execute(
                "SELECT piece_id || ':' || track_index FROM track_signatures_t WHERE has_identity "
                "AND scheme = ? ORDER BY piece_id, track_index",
                [songs.TRACK_SCHEME],
            ).fetchall()
        ]
        tsql = (
            "SELECT piece_id || ':' || track_index AS key, vector FROM track_signatures_t "
            f"WHERE has_identity AND scheme = '{songs.TRACK_SCHEME}'"
        )
        tidx, new_tracks = _update_index(
            _open_index(lake, "tracks", songs.TRACK_CONFIG, set(track_keys)),
            track_keys,
            lambda keys: _fetch_vectors(con, tsql, keys, songs.TRACK_DIM),
        )

        def ngrams_of(keys: list[str]) -> dict[str, np.ndarray]:
            import pyarrow as pa

            con.register("wanted_tracks", pa.table({"key": pa.array(keys, pa.string())}))
            try:
                got = con.execute(
                    "SELECT piece_id || ':' || track_index AS key, ngrams FROM track_signatures_t "
                    "WHERE scheme = ? AND piece_id || ':' || track_index IN (SELECT key FROM wanted_tracks)",
                    [songs.TRACK_SCHEME],
                ).fetchall()
            finally:
                con.unregister("wanted_tracks")
            return {k: np.asarray(v, np.int32) for k, v in got}

        matches = songs.match_tracks(tidx, new_tracks, ngrams_of) if new_tracks else []
        stored_songs = (
            con.execute(
                "SELECT piece_a, piece_b, max(containment), max(shared_ngrams) FROM song_pairs_t "
                "WHERE scheme = ? GROUP BY ALL",
                [songs.TRACK_SCHEME],
            ).fetchall()
            if new_tracks != track_keys
            else []
        )
        lmd = con.execute(
            "SELECT DISTINCT piece_id, lmd_md5 FROM pieces WHERE lmd_md5 IS NOT NULL AND piece_id IS NOT NULL AND status = 'ok'"
        ).fetchall()
        cols = {r[0] for r in con.execute("DESCRIBE pieces").fetchall()}
        ext = con.execute(
            "SELECT piece_id, list_sort(list_distinct(flatten(list(coalesce(msd_ids, []::VARCHAR[]))))), "
            + (
                "list_distinct(list(mutopia_id) FILTER (WHERE mutopia_id IS NOT NULL)), "
                if "mutopia_id" in cols
                else "[]::VARCHAR[], "
            )
            + (
                "list_distinct(list(parent_piece_id) FILTER (WHERE parent_piece_id IS NOT NULL)) "
                if "parent_piece_id" in cols
                else "[]::VARCHAR[] "
            )
            + "FROM pieces WHERE status = 'ok' AND piece_id IS NOT NULL GROUP BY piece_id"
        ).fetchall()
        latest = con.execute("SELECT piece_id, dedup_cluster FROM dedup_latest ORDER BY 1").fetchall()
        latest_songs = con.execute(
            "SELECT piece_id, song_group, joined_by, threshold FROM song_groups_latest ORDER BY 1"
        ).fetchall()
    finally:
        con.close()

    # --- dedup clusters: hashes, stored + new near-dup pairs, Lakh md5
    near: dict[tuple[str, str], float] = {}
    for a, b, sc in [*stored, *new_dup_pairs]:
        if a in row_of and b in row_of:
            key = (a, b) if a < b else (b, a)
            near[key] = max(sc, near.get(key, -1.0))
    result = dedup.cluster(
        ids,
        None,
        [str(h) for h in tbl["content_hash"]],
        transposed_hashes=[str(h) for h in tbl["content_hash_transposed"]],
        threshold=threshold,
        n_notes=[int(n) for n in tbl["n_notes"]],
        lengths=[float(x) for x in tbl["duration_quarters"]],
        near_pairs=[(row_of[a], row_of[b], sc) for (a, b), sc in sorted(near.items())],
    )
    cluster_of = dict(result.cluster_of)
    by_md5: dict[str, list[str]] = {}
    for pid, md5 in lmd:
        if pid in cluster_of:
            by_md5.setdefault(md5, []).append(pid)
    reps = _merge_groups(ids, cluster_of, by_md5.values(), [int(n) for n in tbl["n_notes"]])
    s.clusters = len(set(reps.values()))
    s.duplicate_pairs = len(result.pairs)

    # --- song groups: dedup clusters, verified track matches, lineage, Lakh md5, MSD / Mutopia ids
    links: list[tuple[str, str, str]] = [(p, c, "dedup") for p, c in reps.items() if p != c]
    best_song: dict[tuple[str, str], tuple[float, int]] = {}
    for a, b, cont, shared in [*stored_songs, *((m.piece_a, m.piece_b, m.containment, m.shared) for m in matches)]:
        old = best_song.get((a, b))
        if old is None or (cont, shared) > old:
            best_song[(a, b)] = (cont, shared)
    links += [
        (a, b, "melody") for (a, b), (cont, shared) in best_song.items() if songs.passes(cont, shared, song_threshold)
    ]
    links += [(p, q, "lmd_md5") for group in by_md5.values() for p in group[1:] for q in group[:1]]
    keys: dict[str, list[str]] = {}
    for pid, msd_ids, mutopia_ids, parents in ext:
        keys[pid] = [f"msd:{m}" for m in msd_ids or []] + [f"mutopia:{m}" for m in mutopia_ids or []]
        links += [(pid, parent, "lineage") for parent in parents or []]
    groups = songs.group_songs(ids, links, keys)
    s.song_groups = groups.n_groups
    s.song_pairs = sum(1 for (cont, shared) in best_song.values() if songs.passes(cont, shared, song_threshold))

    new = sorted(reps.items())
    new_songs = sorted((p, groups.group_of[p], groups.joined_by[p], song_threshold) for p in ids)
    with lake.transaction({"command": "curate dedup", "run_id": run_id}) as tx:
        tx.write(
            "dedup_pairs",
            [{"piece_a": a, "piece_b": b, "score": round(sc, 6), "run_id": run_id} for a, b, sc in new_dup_pairs],
        )
        tx.write("song_pairs", [m.row(run_id) for m in matches])
        # only the rows that changed are replaced (one row per piece): work in proportion to the change
        was = dict(latest)
        changed = [(pid, c) for pid, c in new if was.get(pid) != c]
        tx.replace_rows(
            "dedup",
            "piece_id",
            [
                {
                    "piece_id": pid,
                    "dedup_cluster": c,
                    "is_representative": pid == c,
                    "dedup_run": run_id,
                    "threshold": threshold,
                }
                for pid, c in changed
            ],
        )
        was_songs = {r[0]: tuple(r) for r in latest_songs}
        tx.replace_rows(
            "song_groups",
            "piece_id",
            [
                {
                    "piece_id": p,
                    "song_group": g,
                    "joined_by": j,
                    "rule": songs.SONG_RULE,
                    "threshold": t,
                    "min_shared": songs.MIN_SHARED,
                    "song_run": run_id,
                }
                for p, g, j, t in new_songs
                if was_songs.get(p) != (p, g, j, t)
            ],
        )
        s.dedup_rows_changed = len(changed)
    # the indexes last: one that holds a piece promises that the piece's pairs are stored
    if new_pieces:
        pidx.meta = {**pidx.meta, "pairs_stored": True}
        save_index(lake, "neardup", pidx, dedup.VECTOR_CONFIG)
    if new_tracks:
        tidx.meta = {**tidx.meta, "pairs_stored": True}
        save_index(lake, "tracks", tidx, songs.TRACK_CONFIG)


def save_index(lake: Lake, name: str, index: Any, config: dict[str, object]) -> None:
    """A faiss index under ``index/<name>``, swapped in atomically.

    Locally: saved beside and renamed into ``index/<name>``. On an object store: uploaded to
    ``index/<name>-<id>/``, then the pointer ``index/<name>.json`` names it (the switch), then
    the previous folder is deleted.
    """
    extra = {k: v for k, v in index.meta.items() if k in ("pairs_stored", "trained_n")}
    if lake.remote:
        folder = f"{name}-{uuid.uuid4().hex[:12]}"
        previous = _index_pointer(lake, name)
        with tempfile.TemporaryDirectory(prefix="midicorpus-index-") as tmp:
            index.save(Path(tmp) / folder, config, extra)
            lake.upload_dir(Path(tmp) / folder, f"index/{folder}")
        lake.write_bytes(f"index/{name}.json", json.dumps({"dir": f"index/{folder}"}).encode())
        if previous:
            lake.remove(previous)
        return
    target = lake.root / "index" / name
    tmp = lake.root / "index" / f".{name}-{uuid.uuid4().hex[:8]}"
    index.save(tmp, config, extra)
    old = lake.root / "index" / f".old-{uuid.uuid4().hex[:8]}"
    if target.exists():
        target.rename(old)
    tmp.rename(target)
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


def _merge_groups(ids: list[str], cluster_of: dict[str, str], groups: Any, n_notes: list[int]) -> dict[str, str]:
    """Union the given groups into the clusters; the representative stays the documented rule's pick."""
    parent = {c: c for c in set(cluster_of.values())}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    notes = dict(zip(ids, n_notes))
    for group in groups:
        roots = sorted({find(cluster_of[p]) for p in group}, key=lambda r: (-notes[r], r))
        for r in roots[1:]:
            parent[r] = roots[0]
    return {pid: find(c) for pid, c in cluster_of.items()}
