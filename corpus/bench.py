"""The performance benchmark (``midicorpus bench``): every stage on real files, in one run.

:func:`run_bench` measures, on the MIDI files under a folder:

* in process, one core: parse + validate + facts (:func:`corpus.parse.analyse`) against a bare
  ``symusic.Score.from_midi`` (the lower bound: ``parse_overhead_vs_symusic``), and the curate
  analysis per piece (:func:`corpus.curate.analyse_piece`);
* key analysis against music21's parse + ``analyze('key')`` on a subset
  (:func:`corpus.curation.key.measure_agreement`): speed ratio and agreement;
* the tokenizer fast path against miditok (:func:`corpus.tokenize.fastpath.bench`);
* the pipeline in the engine (Dask, ``workers`` processes): ingest, curate and tokenize into a
  lake, files/s per stage, peak resident memory per worker (the worker process and its
  sandboxed parser child, their ``VmHWM``), and the tokenize stage on 1 and 2 workers;
* DuckDB: a few representative queries over that lake;
* the snapshot loader's tokens/s, when the snapshot and loader modules exist;
* a projection of each stage to the Lakh MIDI Dataset (176,581 files) on this machine.

A section whose module is not there yet reports ``null`` and names it in ``missing``: never
a made-up number. :func:`run_scale` (``--scale``) generates synthetic corpora
(:mod:`corpus.synth`) of growing size and ingests + curates each, to show that throughput and
memory per worker stay flat with N.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import platform
import resource
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

LAKH_FILES = 176_581
MIDI_SUFFIXES = (".mid", ".midi", ".kar", ".rmi")
KEY_MAX_BYTES = 64 << 10  # music21 needs seconds per large file: the key subset skips them
QUERIES: dict[str, str] = {
    "pieces_by_source_status": "SELECT source, status, count(*) FROM pieces GROUP BY ALL",
    "rejects_by_reason": "SELECT reason, count(*) n, any_value(detail) FROM rejects GROUP BY reason ORDER BY n DESC",
    "polyphonic_minor_500_notes": (
        "SELECT source, license, count(*) FROM features JOIN pieces USING (piece_id) "
        "WHERE texture = 'polyphonic' AND key_mode = 'minor' AND n_notes > 500 GROUP BY ALL"
    ),
    "tracks_per_program": (
        "SELECT program, is_drum, count(*) n, avg(n_notes) FROM tracks GROUP BY ALL ORDER BY n DESC LIMIT 20"
    ),
    "dedup_clusters": "SELECT count(DISTINCT dedup_cluster), count(*) FROM features",
}
Echo = Callable[[str], None]


# ------------------------------------------------------------------------------- helpers
def midi_files(root: str | os.PathLike[str]) -> list[Path]:
    return sorted(p for p in Path(root).rglob("*") if p.is_file() and p.suffix.lower() in MIDI_SUFFIXES)


def _median_ms(times: Sequence[float]) -> float | None:
    return round(1000 * statistics.median(times), 4) if times else None


def _rate(n: int, seconds: float) -> float | None:
    return round(n / seconds, 2) if seconds > 0 and n else None


def _best(fn: Callable[[], Any], repeat: int) -> tuple[float, Any, BaseException | None]:
    """Best wall time of ``repeat`` calls, the last result, and the exception if it raised."""
    best = float("inf")
    out: Any = None
    err: BaseException | None = None
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        try:
            out, err = fn(), None
        except Exception as exc:  # noqa: BLE001 - a failing file is timed and reported, not hidden
            out, err = None, exc
        best = min(best, time.perf_counter() - t0)
    return best, out, err


def _hwm_mb(pid: int | str = "self") -> float | None:
    """Peak resident set (VmHWM) of a process, MB; None where /proc does not say."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def worker_memory() -> dict[str, Any]:
    """Run inside a Dask worker: peak RSS of the worker process and of its children (the
    sandboxed parser), MB. Falls back to ``ru_maxrss`` where /proc is missing."""
    import psutil

    me = _hwm_mb()
    if me is None:
        me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = {}
    for child in psutil.Process().children(recursive=True):
        hwm = _hwm_mb(child.pid)
        if hwm is not None:
            children[child.pid] = hwm
    return {
        "worker_mb": round(me, 1),
        "children_mb": [round(v, 1) for v in children.values()],
        "total_mb": round(me + sum(children.values()), 1),
    }


def _engine_memory(engine: Any) -> dict[str, Any] | None:
    if engine.client is None:
        return None
    per = engine.client.run(worker_memory)
    rows = list(per.values())
    return {
        "peak_rss_mb_per_worker": max(r["total_mb"] for r in rows) if rows else None,
        "workers": rows,
    }


# ------------------------------------------------------------------------------- sections
def bench_parse(datas: Sequence[tuple[str, bytes]], repeat: int = 3) -> dict[str, Any]:
    """analyse (check + symusic + facts) vs bare symusic, per file best of ``repeat``."""
    import symusic

    from corpus.parse import Reject, analyse

    ours, bare, both_ours, both_bare = [], [], [], []
    ok: list[str] = []
    rejected: dict[str, int] = {}
    per_file: dict[str, float] = {}
    for name, data in datas:
        t_ours, _, err = _best(lambda d=data: analyse(d), repeat)
        t_bare, _, err_bare = _best(lambda d=data: symusic.Score.from_midi(d), repeat)
        ours.append(t_ours)
        per_file[name] = t_ours
        if err is None:
            ok.append(name)
        elif isinstance(err, Reject):
            rejected[err.reason] = rejected.get(err.reason, 0) + 1
        else:
            rejected[f"BUG {type(err).__name__}"] = rejected.get(f"BUG {type(err).__name__}", 0) + 1
        if err_bare is None:
            bare.append(t_bare)
            if err is None:
                both_ours.append(t_ours)
                both_bare.append(t_bare)
    return {
        "files": len(datas),
        "ok": len(ok),
        "rejected": dict(sorted(rejected.items())),
        "files_per_s": _rate(len(ours), sum(ours)),
        "median_ms": _median_ms(ours),
        "mean_ms": round(1000 * sum(ours) / len(ours), 4) if ours else None,
        "symusic_files_per_s": _rate(len(bare), sum(bare)),
        "symusic_median_ms": _median_ms(bare),
        "overhead_vs_symusic": round(sum(both_ours) / sum(both_bare), 3) if sum(both_bare) > 0 else None,
        "ok_names": ok,
        "per_file_s": per_file,
    }


def bench_curate_piece(datas: Sequence[tuple[str, bytes]]) -> dict[str, Any]:
    """corpus.curate.analyse_piece (texture, key, windows, dedup signature) per piece."""
    from corpus.curate import analyse_piece

    times, failed = [], 0
    per_file: dict[str, float] = {}
    for name, data in datas:
        t, _, err = _best(lambda d=data: analyse_piece("bench", d), 1)
        if err is not None:
            failed += 1
            continue
        times.append(t)
        per_file[name] = t
    return {
        "pieces": len(times),
        "failed": failed,
        "files_per_s": _rate(len(times), sum(times)),
        "median_ms": _median_ms(times),
        "per_file_s": per_file,
    }


def key_subset(paths: Sequence[Path], n: int) -> list[Path]:
    """``n`` files spread over the size range (up to :data:`KEY_MAX_BYTES`), deterministic."""
    small = sorted((p for p in paths if p.stat().st_size <= KEY_MAX_BYTES), key=lambda p: (p.stat().st_size, str(p)))
    if len(small) <= n:
        return small
    step = len(small) / n
    return [small[int(i * step)] for i in range(n)]


def bench_key(paths: Sequence[Path], n: int = 40) -> dict[str, Any]:
    from corpus.curation.key import measure_agreement

    subset = key_subset(paths, n)
    with warnings.catch_warnings():  # music21 warns per unnamed instrument: noise here
        warnings.simplefilter("ignore")
        res = measure_agreement(subset)
    return {
        "files": len(subset),
        "measured": res["n"],
        "speedup_vs_music21": round(res["speedup"], 2) if res["n"] else None,
        "agreement": round(res["rate"], 4) if res["n"] else None,
        "ours_ms_per_file": round(1000 * res["ours_s"] / res["n"], 3) if res["n"] else None,
        "music21_ms_per_file": round(1000 * res["music21_s"] / res["n"], 1) if res["n"] else None,
        "per_piece_speedup": res["per_piece_speedup"],
        "disagreements": [d["path"] for d in res["disagreements"]],
        "skipped": len(res["skipped"]),
    }


def bench_key_accuracy(data_dir: Path | None, arrangements: Path | None, *, chorales: bool = True) -> dict[str, Any]:
    """Key accuracy against human labels (:mod:`corpus.curation.key_labels`): per set and half.

    For the default estimate (``key_evidence``), the music21-compatible one (ours) and
    Krumhansl-Schmuckler: exact and MIREX-weighted accuracy on the tuning half, the held-out
    half and both.
    """
    import dataclasses

    from corpus.curation import key_labels
    from corpus.curation.key_evidence import DEFAULT_WEIGHTS

    t0 = time.perf_counter()
    skipped: list[tuple[str, str]] = []
    with warnings.catch_warnings():  # music21 warns while converting some chorales: noise here
        warnings.simplefilter("ignore")
        pieces = key_labels.labelled_sets(data_dir, arrangements, chorales=chorales)
        scored = key_labels.score_pieces(pieces, skipped)
    rows = [
        {k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in key_labels.accuracy_table(scored)
    ]
    sel = (
        key_labels.select_weights(scored)
        if any(s.piece.half == "tune" and s.evidence is not None for s in scored)
        else None
    )
    return {
        "methods": list(key_labels.METHODS),
        "rows": rows,
        "selection": None
        if sel is None
        else {
            "family": sel["family"],
            "weights": dataclasses.asdict(sel["weights"]),
            "is_default": sel["weights"] == DEFAULT_WEIGHTS,
            "best_cv": sel["best_cv"],
            "families": sel["families"],
            "sets": sorted({s.piece.set for s in scored}),
        },
        "skipped": skipped,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def format_key_accuracy(acc: dict[str, Any]) -> str:
    """The key accuracy table: one line per set and half, exact / MIREX per method."""
    head = ["set", "half", "n"] + [f"{m} exact/mirex" for m in acc["methods"]]
    lines = [head]
    for r in acc["rows"]:
        lines.append(
            [r["set"], r["half"], str(r["n"])]
            + [f"{_f(r[f'{m}_exact'], '.3f')} / {_f(r[f'{m}_mirex'], '.3f')}" for m in acc["methods"]]
        )
    widths = [max(len(x[i]) for x in lines) for i in range(len(head))]
    out = ["key accuracy vs human labels (default = key_evidence, music21 = ours, krumhansl):"]
    out += ["  " + "  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines]
    if "songs_default_better" in (acc["rows"] or [{}])[0]:
        out.append("  songs where default / music21 is right more often (held halves):")
        out += [
            f"    {r['set']}: {r['songs_default_better']} / {r['songs_music21_better']}"
            for r in acc["rows"]
            if r["half"] == "held"
        ]
    sel = acc.get("selection")
    if sel:
        nonzero = ", ".join(f"{k}={v:g}" for k, v in sel["weights"].items() if v and k != "hist")
        out.append(
            "  weights chosen on the tuning halves (5-fold CV by song; family: CV, free parameters,"
            " SE of the difference to the best, * within one SE):"
        )
        out += [
            f"    {f:32s} {v['cv']:.4f}  {v['n_weights']} p  se {v['se_vs_best']:.4f}"
            + (" *" if v.get("within_se") else "")
            for f, v in sel["families"].items()
        ]
        out.append(
            f"  kept: {sel['family']} ({nonzero or 'histogram only'}), "
            + (
                "= DEFAULT_WEIGHTS"
                if sel["is_default"]
                else "DIFFERENT from DEFAULT_WEIGHTS (chosen on the tuning halves of every set; here: "
                + ", ".join(sel["sets"])
                + ")"
            )
        )
    if acc["skipped"]:
        out.append(f"  left out (could not be loaded): {', '.join(n for n, _ in acc['skipped'])}")
    return "\n".join(out)


def _fastpath_schemes() -> tuple[str, ...]:
    from corpus.tokenize.fastpath import SCHEMES

    return SCHEMES


FASTPATH_SCHEMES = _fastpath_schemes()


def bench_fastpath(paths: Sequence[Path], schemes: Sequence[str] = FASTPATH_SCHEMES) -> dict[str, Any]:
    from corpus.tokenize.fastpath import bench

    per = {s: bench(paths, s) for s in schemes}
    mt = sum(r["miditok_ms_per_file"] * r["files"] for r in per.values())
    fa = sum(r["fast_ms_per_file"] * r["files"] for r in per.values())
    return {
        "speedup_vs_miditok": round(mt / fa, 2) if fa else None,
        "identical_ids": all(r["identical_fraction"] == 1.0 for r in per.values()),
        "schemes": per,
        "per_scheme": {
            s: {
                "fastpath_speedup_vs_miditok": round(r["speedup"], 2),
                "fastpath_identical_ids": r["identical_fraction"] == 1.0,
                "miditok_ms_per_file": round(r["miditok_ms_per_file"], 3),
                "fast_ms_per_file": round(r["fast_ms_per_file"], 3),
            }
            for s, r in per.items()
        },
    }


def _preset_schemes() -> tuple[str, ...]:
    from corpus.tokenize.presets import names

    return tuple(names())


def preset_batch(scheme: str, datas: Sequence[tuple[str, bytes]]) -> list[Any]:
    """The tokenize stage's own batch task over ``datas`` (name, bytes) with ``scheme``'s preset,
    untransposed, verified as the preset says: its (piece, shift, result) rows."""
    from corpus.tokenize import presets
    from corpus.tokenize.stage import tokenize_batch

    tok, transform = presets.build(scheme)
    text = presets.tokenizer_json(tok, transform)
    return tokenize_batch(
        [(name, data, [0]) for name, data in datas],
        text,
        presets.tokenizer_hash(text),
        0,
        127,
        verify=presets.PRESETS[scheme].verify,
    )


def bench_kept(datas: Sequence[tuple[str, bytes]], schemes: Sequence[str] | None = None) -> dict[str, Any]:
    """Pieces kept / pieces parsed per preset scheme, through the stage's own batch task.

    ``datas`` are the parsed files (name, bytes); each scheme encodes them as the tokenize
    stage does (fast path where supported, the round-trip check where the preset verifies),
    untransposed, in this process. Reports the kept share, the share of what REMI keeps,
    the rejects per reason and every lost piece with its reason and detail.
    """
    from corpus.tokenize import presets

    schemes = tuple(schemes) if schemes is not None else _preset_schemes()
    per: dict[str, Any] = {}
    lost: dict[str, list[dict[str, str]]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for scheme in schemes:
            t0 = time.perf_counter()
            res = preset_batch(scheme, datas)
            reasons: dict[str, int] = {}
            lost[scheme] = []
            for name, _, r in res:
                if r[0] != "ok":
                    reasons[r[1]] = reasons.get(r[1], 0) + 1
                    lost[scheme].append({"piece": name, "reason": r[1], "detail": r[2]})
            kept = len(res) - sum(reasons.values())
            per[scheme] = {
                "parsed": len(res),
                "kept": kept,
                "kept_share": round(kept / len(res), 4) if res else None,
                "reasons": dict(sorted(reasons.items())),
                "verified": presets.PRESETS[scheme].verify,
                "seconds": round(time.perf_counter() - t0, 2),
            }
    if "remi" in per and per["remi"]["kept"]:
        remi_kept = {n for n, _ in datas} - {x["piece"] for x in lost["remi"]}
        for scheme, v in per.items():
            mine = remi_kept - {x["piece"] for x in lost[scheme]}
            v["kept_vs_remi"] = round(len(mine) / len(remi_kept), 4)
    return {"per_scheme": per, "lost": lost}


def bench_bpe(paths: Sequence[Path], n: int = 60, vocab_extra: int = 500) -> dict[str, Any]:
    """Subword (BPE) encode of base tokens: one call per piece vs one batched call.

    A REMI tokenizer trained on ``n`` files (up to ``n``) of ``paths``; the base tokens of
    every file are made first (not timed), then encoded piece by piece with miditok's
    ``encode_token_ids`` and in one batch (what the stage does per batch). Tokens/s count
    base tokens in.
    """
    import warnings as _w

    import miditok
    import symusic

    files = list(paths[:n])
    tok = miditok.REMI()
    with _w.catch_warnings():
        _w.simplefilter("ignore")
        tok.train(vocab_size=len(tok.vocab) + vocab_extra, model="BPE", files_paths=files)
        seqs = []
        for p in files:
            res = tok.encode(symusic.Score(str(p)), encode_ids=False)
            seqs.extend(res if isinstance(res, list) else [res])
    base_tokens = sum(len(s.ids) for s in seqs)
    t0 = time.perf_counter()
    one = [tok.encode_token_ids(s) or list(s.ids) for s in seqs]
    t_one = time.perf_counter() - t0
    for s in seqs:
        s.are_ids_encoded = False
        s.ids = [tok.vocab[t] for t in s.tokens]
    t0 = time.perf_counter()
    tok.encode_token_ids(seqs)
    t_batch = time.perf_counter() - t0
    return {
        "files": len(files),
        "base_tokens": base_tokens,
        "per_piece_tokens_per_s": _rate(base_tokens, t_one),
        "batched_tokens_per_s": _rate(base_tokens, t_batch),
        "batched_speedup": round(t_one / t_batch, 2) if t_batch else None,
        "identical_ids": one == [list(s.ids) for s in seqs],
    }


def bench_queries(lake: Any, repeat: int = 3) -> dict[str, Any]:
    t0 = time.perf_counter()
    con = lake.connect()
    connect_ms = 1000 * (time.perf_counter() - t0)
    out: dict[str, Any] = {"connect_ms": round(connect_ms, 2)}
    try:
        for name, sql in QUERIES.items():
            t, rows, err = _best(lambda s=sql: con.execute(s).fetchall(), repeat)
            out[name] = {
                "ms": round(1000 * t, 2),
                "rows": len(rows) if rows is not None else None,
                "error": f"{type(err).__name__}: {err}" if err else None,
            }
    finally:
        con.close()
    return out


def _tokenize_baseline(datas: Sequence[bytes], scheme: str) -> float:
    """Seconds for bare symusic parse + miditok encode of every file, in process."""
    import symusic

    from corpus.tokenize import presets

    tok, _ = presets.build(scheme)
    total = 0.0
    for data in datas:
        t0 = time.perf_counter()
        try:
            tok.encode(symusic.Score.from_midi(data))
        except Exception:  # noqa: BLE001 - a file miditok cannot take still costs its time
            pass
        total += time.perf_counter() - t0
    return total


def bench_tokenize(lake: Any, scheme: str = "remi", echo: Echo = print) -> dict[str, Any] | None:
    """The tokenize stage on copies of the curated lake with 1 and 2 workers; None if absent.

    Overhead and scaling are measured on miditok's own encoder (the fast path off), which is
    what they are about: what Dask adds around miditok. The fast path (the default) is then
    measured the same way and reported beside them.
    """
    if importlib.util.find_spec("corpus.tokenize.stage") is None:
        return None
    from corpus.engine import Engine
    from corpus.lake import Lake
    from corpus.tokenize.stage import tokenize

    con = lake.connect()
    try:
        pids = [r[0] for r in con.execute("SELECT piece_id FROM piece_analysis_t ORDER BY 1").fetchall()]
    finally:
        con.close()
    runs: dict[str, dict[str, Any]] = {}
    # (workers, fast path): miditok 1 and 2 workers on copies, fast path 1 on a copy, 2 on the lake
    for w, fast in ((1, False), (2, False), (1, True), (2, True)):
        root = Path(tempfile.mkdtemp(prefix=f"bench-tok{w}-", dir=lake.root.parent))
        try:
            keep = w == 2 and fast  # the lake itself keeps the tokens (the loader reads them)
            if not keep:
                shutil.copytree(lake.root, root / "lake", ignore=shutil.ignore_patterns(".lock"))
            copy = lake if keep else Lake(root / "lake")
            with copy.lock("bench tokenize"), Engine(workers=w) as engine:
                engine.start()
                engine.client.run(_warm_tokenizer_imports)  # imports are start-up, not throughput
                t0 = time.perf_counter()
                s = tokenize(copy, engine, [scheme], use_fastpath=fast)
                secs = time.perf_counter() - t0
                mem = _engine_memory(engine)
            done = sum(x.pieces for x in s.schemes)
            toks = sum(x.tokens for x in s.schemes)
            runs[f"{w}{'-fast' if fast else ''}"] = {
                "seconds": round(secs, 3),
                "pieces": done,
                "tokens": toks,
                "rejected": sum(x.rejected for x in s.schemes),
                "files_per_s": _rate(done, secs),
                "memory": mem,
            }
            echo(
                f"  tokenize {scheme} ({'fast path' if fast else 'miditok'}) with {w} worker(s): {done} pieces in {secs:.1f} s"
            )
        finally:
            shutil.rmtree(root, ignore_errors=True)
    base = _tokenize_baseline([lake.get_raw(p) for p in pids], scheme)
    return {
        "scheme": scheme,
        "runs": {str(k): v for k, v in runs.items()},
        "baseline_symusic_miditok_s": round(base, 3),
        "overhead_vs_miditok": round(runs["1"]["seconds"] / base, 3) if base > 0 else None,
        "scaling_2_workers": round(runs["1"]["seconds"] / runs["2"]["seconds"], 3)
        if runs["2"]["seconds"] > 0
        else None,
        "fastpath_stage_speedup_1_worker": round(runs["1"]["seconds"] / runs["1-fast"]["seconds"], 3)
        if runs["1-fast"]["seconds"] > 0
        else None,
        "fastpath_scaling_2_workers": round(runs["1-fast"]["seconds"] / runs["2-fast"]["seconds"], 3)
        if runs["2-fast"]["seconds"] > 0
        else None,
    }


def _warm_tokenizer_imports() -> None:
    import miditok  # noqa: F401 - imported for its start-up cost
    import symusic  # noqa: F401

    import corpus.tokenize.fastpath  # noqa: F401


def bench_loader(lake: Any, scheme: str = "remi", seconds: float = 2.0) -> dict[str, Any] | None:
    """Tokens/s of the packed snapshot loader (``train.data.loader_tokens_per_s``) over a
    snapshot of the tokenized lake; None when ``corpus.snapshot`` or ``train.data`` is absent."""
    try:
        if importlib.util.find_spec("corpus.snapshot") is None or importlib.util.find_spec("train.data") is None:
            return None
    except ModuleNotFoundError:
        return None
    from corpus.snapshot import SnapshotSpec, create
    from train.data import loader_tokens_per_s

    with lake.lock("bench snapshot"):
        t0 = time.perf_counter()
        snap = create(lake, SnapshotSpec(name="bench", scheme=scheme))
        create_s = time.perf_counter() - t0
    try:
        res = loader_tokens_per_s(snap.path, workers=(0, 2), seconds=seconds)
    except ValueError:  # a small benchmark set: smaller batches
        res = loader_tokens_per_s(snap.path, workers=(0, 2), seq_len=256, batch_size=4, seconds=seconds)
    best = max(w["tokens_per_s"] for w in res["workers"].values())
    return {"snapshot_create_s": round(create_s, 3), "tokens_per_s": round(best, 1), **res}


# ------------------------------------------------------------------------------- pipeline
def _items(paths: Sequence[Path], root: Path, source: str) -> Iterator[Any]:
    from corpus.sources.base import SourceItem

    for p in paths:
        yield SourceItem(source=source, uri=str(p.relative_to(root)), data=p.read_bytes(), name=p.name)


def run_pipeline(
    lake: Any, items: Any, workers: int, echo: Echo = print, tokenize_scheme: str | None = None
) -> dict[str, Any]:
    """Ingest + curate (+ tokenize ``tokenize_scheme`` when given) ``items`` into ``lake`` on a
    fresh engine; times and peak memory."""
    from corpus.curate import curate
    from corpus.engine import Engine
    from corpus.ingest import ingest

    with lake.lock("bench"), Engine(workers=workers) as engine:
        t0 = time.perf_counter()
        engine.start()
        start_s = time.perf_counter() - t0
        s = ingest(lake, items, engine, command="bench ingest")
        mem_ingest = _engine_memory(engine)
        echo(f"  ingest: {s.line()} in {s.seconds:.1f} s")
        c = curate(lake, engine)
        echo(f"  curate: {c.line()} in {c.seconds:.1f} s")
        mem = mem_curate = _engine_memory(engine)
        tok = None
        if tokenize_scheme:
            from corpus.tokenize.stage import tokenize

            ts = tokenize(lake, engine, [tokenize_scheme])
            done = sum(x.pieces + x.rejected for x in ts.schemes)
            echo(f"  tokenize {tokenize_scheme}: {'; '.join(ts.lines())} in {ts.seconds:.1f} s")
            mem = _engine_memory(engine)
            tok = {
                "scheme": tokenize_scheme,
                "pieces": sum(x.pieces for x in ts.schemes),
                "rejected": sum(x.rejected for x in ts.schemes),
                "tokens": sum(x.tokens for x in ts.schemes),
                "seconds": round(ts.seconds, 3),
                "files_per_s": _rate(done, ts.seconds),
            }
    new = s.inputs - s.unchanged
    return {
        "workers": workers,
        "cluster_start_s": round(start_s, 3),
        "ingest": {**s.as_dict(), "files_per_s": _rate(new, s.seconds)},
        "curate": {
            "analysed": c.analysed,
            "failed": c.failed,
            "clusters": c.clusters,
            "seconds": round(c.seconds, 3),
            "files_per_s": _rate(c.analysed + c.failed, c.seconds),
        },
        "memory_after_ingest": mem_ingest,
        "memory_after_curate": mem_curate,
        "tokenize": tok,
        "memory": mem,
        "peak_rss_mb_per_worker": (mem or {}).get("peak_rss_mb_per_worker"),
    }


def _peak_rss(pipe: dict[str, Any], tok: dict[str, Any] | None) -> float | None:
    """Largest peak RSS of one worker (with its parser child) over every engine run."""
    vals = [pipe.get("peak_rss_mb_per_worker")]
    for run in ((tok or {}).get("runs") or {}).values():
        vals.append((run.get("memory") or {}).get("peak_rss_mb_per_worker"))
    vals = [v for v in vals if v is not None]
    return max(vals) if vals else None


def _lakh_projection(result: dict[str, Any], lakh_factor: dict[str, float]) -> dict[str, Any]:
    """Hours per stage for LAKH_FILES at the measured pipeline rates (``workers`` processes),
    each multiplied by ``lakh_factor[stage]`` (default 1)."""
    rates = {
        "ingest": result["pipeline"]["ingest"]["files_per_s"],
        "curate": result["pipeline"]["curate"]["files_per_s"],
        "tokenize": ((result.get("tokenize") or {}).get("runs") or {}).get("2-fast", {}).get("files_per_s"),
    }
    hours: dict[str, float | None] = {}
    for stage, rate in rates.items():
        if not rate:
            hours[stage] = None
            continue
        hours[stage] = round(LAKH_FILES / rate * lakh_factor.get(stage, 1.0) / 3600, 3)
    total = sum(h for h in hours.values() if h is not None)
    return {
        "by_stage_hours": hours,
        "total_hours": round(total, 3),
        "complete": all(h is not None for h in hours.values()),
    }


def _factor(per_file: dict[str, float], pick: Callable[[str], bool]) -> float:
    sel = [t for k, t in per_file.items() if pick(k)]
    if len(sel) < 3 or not per_file:
        return 1.0
    return round((sum(sel) / len(sel)) / (sum(per_file.values()) / len(per_file)), 3)


# ------------------------------------------------------------------------------- the run
def run_bench(
    files_dir: Path,
    out: Path | None = None,
    workers: int = 2,
    lake_dir: Path | None = None,
    *,
    key_files: int = 40,
    repeat: int = 3,
    fastpath_schemes: Sequence[str] = FASTPATH_SCHEMES,
    tokenize_scheme: str = "remi",
    kept_schemes: Sequence[str] | None = None,
    echo: Echo = print,
) -> dict[str, Any]:
    """Benchmark every stage on the MIDI files under ``files_dir``; print a table, write JSON.

    ``lake_dir`` (default: a temporary folder, removed after) receives the pipeline run; pass
    an empty or new folder, since files already in a lake are not parsed again. Returns the
    result dict (also written to ``out`` when given).
    """
    from corpus.lake import Lake

    files_dir = Path(files_dir)
    paths = midi_files(files_dir)
    if not paths:
        raise ValueError(f"no .mid/.midi/.kar/.rmi file under {str(files_dir)!r}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1 for the benchmark, got {workers}")
    t_start = time.perf_counter()
    missing: list[str] = []
    datas = [(str(p.relative_to(files_dir)), p.read_bytes()) for p in paths]
    echo(f"bench: {len(paths)} files under {files_dir}")

    echo("parse (in process)...")
    parse = bench_parse(datas, repeat)
    ok_set = set(parse.pop("ok_names"))
    ok_datas = [(n, d) for n, d in datas if n in ok_set]
    ok_paths = [files_dir / n for n, _ in ok_datas]

    echo("curate analysis per piece (in process)...")
    cur = bench_curate_piece(ok_datas)

    echo(f"key vs music21 on {key_files} files...")
    key = bench_key(ok_paths, key_files)

    echo("key accuracy vs human labels...")
    arrangements = files_dir.parent / "arrangements"
    key_acc = bench_key_accuracy(files_dir, arrangements if arrangements.is_dir() else None)
    echo(format_key_accuracy(key_acc))

    echo("tokenizer fast path vs miditok...")
    fast = bench_fastpath(ok_paths, fastpath_schemes)

    echo("kept share per scheme (pieces kept / pieces parsed)...")
    kept = bench_kept(ok_datas, kept_schemes)

    echo("BPE encode, per piece vs batched...")
    bpe = bench_bpe(ok_paths)

    tmp = None
    if lake_dir is None:
        tmp = Path(tempfile.mkdtemp(prefix="midicorpus-bench-"))
        lake_dir = tmp / "lake"
    lake = Lake(lake_dir)
    reused = lake.exists()
    try:
        echo(f"pipeline on {workers} workers into {lake.root}...")
        pipe = run_pipeline(lake, _items(paths, files_dir, "bench"), workers, echo)
        echo("tokenize stage...")
        tok = bench_tokenize(lake, tokenize_scheme, echo)
        if tok is None:
            missing.append("corpus.tokenize.stage")
        echo("duckdb queries...")
        queries = bench_queries(lake)
        loader = bench_loader(lake, tokenize_scheme) if tok is not None else None
        if loader is None:
            missing.append("snapshot loader (corpus.snapshot, train.data)")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    def is_lakh(name: str) -> bool:
        return "lmd_" in name or name.startswith("lakh/")

    result: dict[str, Any] = {
        "parse_overhead_vs_symusic": parse["overhead_vs_symusic"],
        "key_speedup_vs_music21": key["speedup_vs_music21"],
        "key_agreement_music21": key["agreement"],
        "tokenize_overhead_vs_miditok": tok["overhead_vs_miditok"] if tok else None,
        "tokenize_scaling_2_workers": tok["scaling_2_workers"] if tok else None,
        "tokenize_fastpath_scaling_2_workers": tok["fastpath_scaling_2_workers"] if tok else None,
        "fastpath_speedup_vs_miditok": fast["speedup_vs_miditok"],
        "fastpath_identical_ids": fast["identical_ids"],
        "fastpath_per_scheme": fast["per_scheme"],
        "kept_share_per_scheme": {k: v["kept_share"] for k, v in kept["per_scheme"].items()},
        "bpe_batched_tokens_per_s": bpe["batched_tokens_per_s"],
        "loader_tokens_per_s": loader["tokens_per_s"] if loader else None,
        "peak_rss_mb_per_worker": _peak_rss(pipe, tok),
        "lakh_projection_hours": None,
        "missing": missing,
        "stages": {
            "parse": {k: v for k, v in parse.items() if k != "per_file_s"},
            "curate_piece": {k: v for k, v in cur.items() if k != "per_file_s"},
            "key": key,
            "key_accuracy": key_acc,
            "fastpath": fast,
            "kept": kept,
            "bpe": bpe,
            "pipeline": pipe,
            "tokenize": tok,
            "duckdb": queries,
            "loader": loader,
        },
        "pipeline": pipe,
        "tokenize": tok,
        "machine": {
            "cpus": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        },
        "files_dir": str(files_dir),
        "files": len(paths),
        "lake_reused": reused,
        "seconds": None,
    }
    # headline: the measured rates as they are. The Lakh files of the benchmark set are a small
    # sample (11 in the shared data, smaller than the average file here): their relative cost
    # is reported as an alternative, not applied
    sample = {"ingest": _factor(parse["per_file_s"], is_lakh), "curate": _factor(cur["per_file_s"], is_lakh)}
    sample["tokenize"] = sample["curate"]  # same notes, same scaling: an assumption, said here
    proj = _lakh_projection(result, {})
    alt = _lakh_projection(result, sample)
    proj["lakh_sample"] = {
        "files": sum(1 for n, _ in datas if is_lakh(n)),
        "relative_cost": sample,
        "total_hours": alt["total_hours"],
        "by_stage_hours": alt["by_stage_hours"],
    }
    result["lakh_projection_hours"] = proj["total_hours"]
    result["lakh_projection"] = proj
    del result["pipeline"], result["tokenize"]
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    echo(format_table(result))
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, sort_keys=False, default=str) + "\n")
        echo(f"wrote {out}")
    return result


def _f(v: Any, spec: str = ".1f") -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v).lower()
    return format(v, spec) if isinstance(v, (int, float)) else str(v)


def format_table(r: dict[str, Any]) -> str:
    """The human summary of a :func:`run_bench` result."""
    st = r["stages"]
    pipe = st["pipeline"]
    tok = st["tokenize"] or {}
    runs = tok.get("runs", {})
    rows = [
        ("stage", "files", "files/s", "median ms/file", "note"),
        (
            "symusic parse (1 core)",
            st["parse"]["files"],
            _f(st["parse"]["symusic_files_per_s"]),
            _f(st["parse"]["symusic_median_ms"], ".3f"),
            "lower bound",
        ),
        (
            "parse+validate+facts (1 core)",
            st["parse"]["files"],
            _f(st["parse"]["files_per_s"]),
            _f(st["parse"]["median_ms"], ".3f"),
            f"x{_f(r['parse_overhead_vs_symusic'], '.2f')} symusic",
        ),
        (
            "curate analysis (1 core)",
            st["curate_piece"]["pieces"],
            _f(st["curate_piece"]["files_per_s"]),
            _f(st["curate_piece"]["median_ms"], ".3f"),
            "texture+key+windows+dedup sig+chords",
        ),
        (
            "key vs music21",
            st["key"]["measured"],
            "-",
            _f(st["key"]["ours_ms_per_file"], ".3f"),
            f"x{_f(r['key_speedup_vs_music21'])} faster, agree {_f(r['key_agreement_music21'], '.3f')}",
        ),
        (
            "tokenize fastpath vs miditok",
            st["fastpath"]["schemes"][next(iter(st["fastpath"]["schemes"]))]["files"],
            "-",
            "-",
            f"x{_f(r['fastpath_speedup_vs_miditok'])} faster, identical {_f(r['fastpath_identical_ids'])}",
        ),
        *[
            (
                f"  fastpath {name}",
                st["fastpath"]["schemes"][name]["files"],
                "-",
                _f(v["fast_ms_per_file"], ".3f"),
                f"x{_f(v['fastpath_speedup_vs_miditok'])} miditok ({_f(v['miditok_ms_per_file'], '.3f')} ms), identical {v['fastpath_identical_ids']}",
            )
            for name, v in st["fastpath"].get("per_scheme", {}).items()
        ],
        *[
            (
                f"  kept {name}",
                v["parsed"],
                "-",
                "-",
                f"{v['kept']} kept ({_f(100 * v['kept_share'] if v['kept_share'] is not None else None)} %"
                + (f", {_f(100 * v['kept_vs_remi'])} % of REMI's" if "kept_vs_remi" in v else "")
                + ")"
                + ("; " + ", ".join(f"{k} {n}" for k, n in v["reasons"].items()) if v["reasons"] else ""),
            )
            for name, v in (st.get("kept") or {}).get("per_scheme", {}).items()
        ],
        (
            f"ingest ({pipe['workers']} workers)",
            pipe["ingest"]["inputs"],
            _f(pipe["ingest"]["files_per_s"]),
            "-",
            f"{pipe['ingest']['seconds']} s + cluster start {pipe['cluster_start_s']} s",
        ),
        (
            f"curate ({pipe['workers']} workers)",
            pipe["curate"]["analysed"],
            _f(pipe["curate"]["files_per_s"]),
            "-",
            f"{pipe['curate']['seconds']} s incl. dedup clustering",
        ),
        (
            "tokenize stage, miditok (1 worker)",
            (runs.get("1") or {}).get("pieces", "-"),
            _f((runs.get("1") or {}).get("files_per_s")),
            "-",
            f"x{_f(r['tokenize_overhead_vs_miditok'], '.2f')} bare symusic+miditok",
        ),
        (
            "tokenize stage, miditok (2 workers)",
            (runs.get("2") or {}).get("pieces", "-"),
            _f((runs.get("2") or {}).get("files_per_s")),
            "-",
            f"scaling x{_f(r['tokenize_scaling_2_workers'], '.2f')}",
        ),
        (
            "tokenize stage, fast path (1 worker)",
            (runs.get("1-fast") or {}).get("pieces", "-"),
            _f((runs.get("1-fast") or {}).get("files_per_s")),
            "-",
            "the default",
        ),
        (
            "tokenize stage, fast path (2 workers)",
            (runs.get("2-fast") or {}).get("pieces", "-"),
            _f((runs.get("2-fast") or {}).get("files_per_s")),
            "-",
            f"scaling x{_f(r['tokenize_fastpath_scaling_2_workers'], '.2f')}",
        ),
        (
            "BPE encode (REMI + 500 merges, 1 core)",
            st["bpe"]["files"],
            "-",
            "-",
            f"{_f(st['bpe']['batched_tokens_per_s'], '.0f')} base tokens/s batched, "
            f"{_f(st['bpe']['per_piece_tokens_per_s'], '.0f')} per piece, identical {st['bpe']['identical_ids']}",
        ),
        ("snapshot loader", "-", "-", "-", f"{_f(r['loader_tokens_per_s'], '.0f')} tokens/s"),
    ]
    for name, q in st["duckdb"].items():
        if isinstance(q, dict):
            rows.append((f"duckdb {name}", q["rows"], "-", _f(q["ms"], ".2f"), q["error"] or ""))
    widths = [max(len(str(row[i])) for row in rows) for i in range(5)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    proj = r["lakh_projection"]
    lines.append("")
    lines.append(f"peak RSS per worker (worker + parser child, any stage): {_f(r['peak_rss_mb_per_worker'])} MB")
    by = ", ".join(f"{k} {_f(v, '.2f')} h" for k, v in proj["by_stage_hours"].items())
    lines.append(
        f"Lakh ({LAKH_FILES:,} files) projection on this machine: {_f(proj['total_hours'], '.2f')} h ({by})"
        + ("" if proj["complete"] else " [incomplete: stages missing]")
    )
    ls = proj.get("lakh_sample") or {}
    if ls.get("files"):
        lines.append(
            f"  weighted by the {ls['files']} Lakh files of this set (relative cost {ls['relative_cost']}): "
            f"{_f(ls['total_hours'], '.2f')} h"
        )
    if r["missing"]:
        lines.append("missing (reported as null): " + ", ".join(r["missing"]))
    return "\n".join(lines)


# ------------------------------------------------------------------------------- scale
def run_scale(
    n_list: Sequence[int] = (2000, 5000, 20000),
    src_dir: Path | None = None,
    workers: int = 2,
    work_dir: Path | None = None,
    seed: int = 0,
    out: Path | None = None,
    echo: Echo = print,
    tokenize_scheme: str | None = "remi",
    keep_lakes: bool = False,
) -> dict[str, Any]:
    """Ingest + curate (+ tokenize ``tokenize_scheme``) synthetic corpora of each size in ``n_list`` (fresh lake and engine
    each), reporting throughput and peak RSS per worker. Long: minutes for 20,000 files.

    ``src_dir`` holds the real fixtures the synthetic pieces are made from (default: the
    shared data beside the repository). Files are generated once, for the largest N, into
    ``work_dir`` (default: a temporary folder, removed after); the corpus of size N is their
    first N.
    """
    from corpus.lake import Lake
    from corpus.synth import generate

    if src_dir is None:
        src_dir = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not n_list or min(n_list) < 1:
        raise ValueError(f"n_list must hold positive sizes, got {list(n_list)}")
    tmp = None
    if work_dir is None:
        tmp = Path(tempfile.mkdtemp(prefix="midicorpus-scale-"))
        work_dir = tmp
    work_dir = Path(work_dir)
    rows = []
    try:
        t0 = time.perf_counter()
        files_dir = work_dir / f"synth-{seed}"
        paths = generate(src_dir, files_dir, max(n_list), seed)
        gen_s = time.perf_counter() - t0
        echo(f"scale: generated {len(paths)} synthetic files in {gen_s:.1f} s")
        for n in sorted(n_list):
            lake_root = work_dir / f"lake-{n}"
            shutil.rmtree(lake_root, ignore_errors=True)
            echo(f"scale: N = {n}")
            res = run_pipeline(
                Lake(lake_root),
                _items(paths[:n], files_dir, "synthetic"),
                workers,
                echo,
                tokenize_scheme=tokenize_scheme,
            )
            size_mb = sum(f.stat().st_size for f in lake_root.rglob("*") if f.is_file()) / 2**20
            rows.append(
                {
                    "n": n,
                    "ingest_files_per_s": res["ingest"]["files_per_s"],
                    "ingest_s": res["ingest"]["seconds"],
                    "ingest_ok": res["ingest"]["ok"],
                    "ingest_duplicate": res["ingest"]["duplicate"],
                    "curate_files_per_s": res["curate"]["files_per_s"],
                    "curate_s": res["curate"]["seconds"],
                    "clusters": res["curate"]["clusters"],
                    "peak_rss_mb_per_worker": res["peak_rss_mb_per_worker"],
                    "peak_rss_mb_per_worker_after_ingest": (res["memory_after_ingest"] or {}).get(
                        "peak_rss_mb_per_worker"
                    ),
                    "peak_rss_mb_per_worker_after_curate": (res["memory_after_curate"] or {}).get(
                        "peak_rss_mb_per_worker"
                    ),
                    "tokenize_files_per_s": (res.get("tokenize") or {}).get("files_per_s"),
                    "tokenize_s": (res.get("tokenize") or {}).get("seconds"),
                    "tokenize_pieces": (res.get("tokenize") or {}).get("pieces"),
                    "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                    "lake_mb": round(size_mb, 1),
                }
            )
            if not keep_lakes:
                shutil.rmtree(lake_root, ignore_errors=True)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "workers": workers,
        "seed": seed,
        "generate_s": round(gen_s, 2),
        "generate_files_per_s": _rate(len(paths), gen_s),
        "runs": rows,
    }
    head = ("N", "ingest files/s", "curate files/s", "tokenize files/s", "clusters", "peak RSS MB/worker", "lake MB")
    table = [head] + [
        (
            r["n"],
            _f(r["ingest_files_per_s"]),
            _f(r["curate_files_per_s"]),
            _f(r["tokenize_files_per_s"]),
            r["clusters"],
            _f(r["peak_rss_mb_per_worker"]),
            _f(r["lake_mb"]),
        )
        for r in rows
    ]
    widths = [max(len(str(t[i])) for t in table) for i in range(len(head))]
    echo("\n".join("  ".join(str(c).ljust(w) for c, w in zip(t, widths)).rstrip() for t in table))
    if out is not None:
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m corpus.bench [--files DIR] [--out FILE] [--workers N] [--lake DIR] [--scale]``."""
    import argparse

    default_files = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    ap = argparse.ArgumentParser(prog="midicorpus bench")
    ap.add_argument("--files", type=Path, default=default_files)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--lake", type=Path, default=None)
    ap.add_argument("--key-files", type=int, default=40)
    ap.add_argument("--scale", action="store_true", help="also run the synthetic scale run (long)")
    a = ap.parse_args(argv)
    run_bench(a.files, a.out, a.workers, a.lake, key_files=a.key_files)
    if a.scale:
        scale_out = a.out.with_name(a.out.stem + "-scale.json") if a.out else None
        run_scale(src_dir=a.files, workers=a.workers, out=scale_out)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
