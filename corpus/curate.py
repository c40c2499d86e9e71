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

from corpus.engine import Engine, prefetched
from corpus.lake import Lake, new_txid, now_utc

KEY_PROFILE = "aarden"
WINDOW_BARS = 8
DEDUP_THRESHOLD = 0.7
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

    def line(self) -> str:
        s = (
            f"{self.analysed} pieces analysed ({self.failed} failed); "
            f"{self.pieces} pieces in {self.clusters} dedup clusters ({self.duplicate_pairs} duplicate pairs)"
        )
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

    Returns ``{"row": piece_analysis row, "tracks": track_texture rows}``, plus
    ``"key_fallback": message`` when the music21 backend raised and our key was used instead.
    """
    import symusic

    from corpus.curation import dedup, key, texture
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
    out: dict[str, Any] = {"row": row, "tracks": tracks}
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
) -> CurateSummary:
    """Analyse the pieces not yet analysed, then recompute duplicate clusters (lake locked).

    ``key_backend``: ``"ours"`` or ``"music21"`` (see the module docstring). With
    ``extract_melodies``, the melodies of polyphonic pieces are extracted and ingested after the
    analysis, and analysed in the same run (:mod:`corpus.curation.melody`; ``min_melody_notes``
    defaults to ``melody.MIN_MELODY_NOTES``).
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
        s.melody_counts = {**counts, "ingested": ing.inputs, "duplicate": ing.duplicate, "rejected": ing.rejected,
                           "unchanged": ing.unchanged}
        _analyse_pending(lake, engine, run_id, s, progress, batch_size, commit_every, key_backend)
    _recluster(lake, run_id, threshold, s)
    s.seconds = time.perf_counter() - t0
    return s


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

    rows: list[dict[str, Any]] = []
    tracks: list[dict[str, Any]] = []
    rejects: list[dict[str, Any]] = []

    def flush() -> None:
        if not (rows or rejects):
            return
        with lake.transaction({"command": "curate", "run_id": run_id}) as tx:
            tx.write("piece_analysis", rows)
            tx.write("track_texture", tracks)
            if rejects:
                tx.write("rejects", rejects, {"stage": "curate"})
        rows.clear()
        tracks.clear()
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
                s.analysed += 1
                if "key_fallback" in out[1]:
                    s.key_fallbacks += 1
            else:
                rejects.append({"piece_id": pid, "reason": out[1], "detail": out[2], "source_uri": None,
                                "created_at": now_utc(), "run_id": run_id})
                s.failed += 1
                s.by_reason[out[1]] = s.by_reason.get(out[1], 0) + 1
        if len(rows) + len(rejects) >= commit_every:
            flush()
        if progress:
            progress(s)
    flush()


def _recluster(lake: Lake, run_id: str, threshold: float, s: CurateSummary) -> None:
    from corpus.curation import dedup

    con = lake.connect()
    try:
        tbl = con.execute(
            "SELECT a.piece_id, a.content_hash, a.content_hash_transposed, a.dedup_vector, f.n_notes, f.duration_quarters "
            "FROM piece_analysis_t a JOIN piece_facts_t f USING (piece_id) ORDER BY a.piece_id"
        ).fetchnumpy()
        lmd = con.execute(
            "SELECT DISTINCT piece_id, lmd_md5 FROM pieces WHERE lmd_md5 IS NOT NULL AND piece_id IS NOT NULL AND status = 'ok'"
        ).fetchall()
        latest = con.execute("SELECT piece_id, dedup_cluster FROM dedup_latest ORDER BY 1").fetchall()
    finally:
        con.close()
    ids = [str(x) for x in tbl["piece_id"]]
    s.pieces = len(ids)
    if not ids:
        return
    vectors = np.stack([np.asarray(v, dtype=np.float32) for v in tbl["dedup_vector"]])
    index = dedup.NearDupIndex.build(ids, vectors)
    result = dedup.cluster(
        ids,
        vectors,
        [str(h) for h in tbl["content_hash"]],
        transposed_hashes=[str(h) for h in tbl["content_hash_transposed"]],
        threshold=threshold,
        n_notes=[int(n) for n in tbl["n_notes"]],
        lengths=[float(x) for x in tbl["duration_quarters"]],
        index=index,
    )
    cluster_of = dict(result.cluster_of)
    # an LPD piece and the Lakh MIDI it came from are the same song: join their clusters
    by_md5: dict[str, list[str]] = {}
    for pid, md5 in lmd:
        if pid in cluster_of:
            by_md5.setdefault(md5, []).append(pid)
    reps = _merge_groups(ids, cluster_of, by_md5.values(), [int(n) for n in tbl["n_notes"]])
    s.clusters = len(set(reps.values()))
    s.duplicate_pairs = len(result.pairs)
    new = sorted(reps.items())
    if new != [tuple(r) for r in latest]:
        with lake.transaction({"command": "curate dedup", "run_id": run_id}) as tx:
            tx.write(
                "dedup",
                [{"piece_id": pid, "dedup_cluster": c, "is_representative": pid == c, "dedup_run": run_id,
                  "threshold": threshold} for pid, c in new],
            )
    save_neardup_index(lake, index)


def save_neardup_index(lake: Lake, index: Any) -> None:
    """The index for ``similar``, swapped in atomically.

    Locally: saved beside and renamed into ``index/neardup``. On an object store: uploaded to
    ``index/neardup-<id>/``, then the pointer ``index/neardup.json`` names it (the switch),
    then the previous folder is deleted.
    """
    if lake.remote:
        name = f"neardup-{uuid.uuid4().hex[:12]}"
        previous = _neardup_pointer(lake)
        with tempfile.TemporaryDirectory(prefix="midicorpus-index-") as tmp:
            index.save(Path(tmp) / name)
            lake.upload_dir(Path(tmp) / name, f"index/{name}")
        lake.write_bytes("index/neardup.json", json.dumps({"dir": f"index/{name}"}).encode())
        if previous:
            lake.remove(previous)
        return
    target = lake.root / "index" / "neardup"
    tmp = lake.root / "index" / f".neardup-{uuid.uuid4().hex[:8]}"
    index.save(tmp)
    old = lake.root / "index" / f".old-{uuid.uuid4().hex[:8]}"
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def _neardup_pointer(lake: Lake) -> str | None:
    try:
        return str(json.loads(lake.read_bytes("index/neardup.json"))["dir"])
    except FileNotFoundError:
        return None


def has_neardup_index(lake: Lake) -> bool:
    if lake.remote:
        return lake.file_exists("index/neardup.json")
    return (lake.root / "index" / "neardup").exists()


def load_neardup_index(lake: Lake) -> Any:
    """The index ``curate`` saved last, or None before the first curate."""
    from corpus.curation.dedup import NearDupIndex

    if not lake.remote:
        path = lake.root / "index" / "neardup"
        return NearDupIndex.load(path) if path.exists() else None
    rel = _neardup_pointer(lake)
    if rel is None:
        return None
    with tempfile.TemporaryDirectory(prefix="midicorpus-index-") as tmp:
        return NearDupIndex.load(lake.download(rel, Path(tmp) / "neardup"))


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
