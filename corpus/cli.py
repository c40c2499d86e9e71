"""The ``midicorpus`` command line (contract: see DESIGN.md).

Heavy libraries are imported inside the commands, so ``midicorpus --help`` stays fast.
Errors a user can cause end in one line on stderr and exit status 2; nothing is written
to the lake unless the command gets that far.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from corpus.progress import Progress  # light: tqdm is imported when a bar starts


class UserError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


# ------------------------------------------------------------------ output helpers
def _cell(v: Any) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, dict)):
        return json.dumps(v, default=str)
    return str(v)


def format_table(names: list[str], rows: list[tuple[Any, ...]], max_width: int = 72) -> str:
    cells = [[_cell(v) for v in row] for row in rows]
    cells = [[c if len(c) <= max_width else c[: max_width - 1] + "…" for c in row] for row in cells]
    widths = [max([len(n)] + [len(r[i]) for r in cells]) for i, n in enumerate(names)]
    line = "  ".join(n.ljust(w) for n, w in zip(names, widths))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join([line, sep, *body])


def render(names: list[str], rows: list[tuple[Any, ...]], fmt: str) -> str:
    if fmt == "json":
        return json.dumps([dict(zip(names, r)) for r in rows], default=str, indent=None)
    if fmt == "csv":
        import csv
        import io

        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(names)
        for r in rows:
            w.writerow(
                ["" if v is None else json.dumps(v, default=str) if isinstance(v, (list, dict)) else v for v in r]
            )
        return buf.getvalue().rstrip("\n")
    return format_table(names, rows)


# ------------------------------------------------------------------ context
class Ctx:
    def __init__(self, args: argparse.Namespace) -> None:
        from corpus.lake import Lake

        self.args = args
        self.lake = Lake(args.lake or os.environ.get("MIDICORPUS_LAKE") or "./lake", catalog=args.catalog)
        if not self.lake.remote and self.lake.root.exists() and not self.lake.root.is_dir():
            raise UserError(
                f"--lake {self.lake.location!r} is a file, not a lake folder; give a folder (a new one is created by ingest)"
            )

    def existing_lake(self) -> Any:
        """The lake, for commands that read it: one line and exit 2 when there is none."""
        if not self.lake.exists():
            raise UserError(
                f"no lake at {self.lake.location}; create one with midicorpus ingest (dir|lakh|lpd|music21) ..., "
                "or give --lake (env MIDICORPUS_LAKE) of an existing one"
            )
        return self.lake

    def engine(self) -> Any:
        from corpus.engine import Engine

        return Engine(self.args.scheduler, self.args.workers)

    def ingest_config(self) -> Any:
        from corpus.ingest import IngestConfig

        a = self.args
        cfg = IngestConfig(policy="strict" if getattr(a, "strict", False) else "lenient", timeout_s=a.timeout)
        if os.environ.get("MIDICORPUS_COMMIT_PIECES"):  # smaller transactions (fault tests)
            cfg.commit_pieces = int(os.environ["MIDICORPUS_COMMIT_PIECES"])
        if os.environ.get("MIDICORPUS_COMMIT_SECONDS"):  # commits by time (kill tests)
            cfg.commit_seconds = float(os.environ["MIDICORPUS_COMMIT_SECONDS"])
        return cfg


def _fmt(ctx: Ctx) -> str:
    """``--format`` of the command (``text`` for those without one, and inside ``run``)."""
    return str(getattr(ctx.args, "format", None) or "text")


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, default=str))


def _step_progress(label: str, unit: str, unit_scale: bool = False) -> Progress:
    """Progress of a stage that reports a :class:`corpus.progress.Step` (snapshot create, report)."""
    return Progress(
        label,
        count=lambda st: st.done,
        total=lambda st: st.total,
        text=lambda st: st.what,
        unit=unit,
        unit_scale=unit_scale,
    )


def _print_ingest(summary: Any, label: str, skipped: int = 0, what: str = "items", fmt: str = "text") -> None:
    if fmt == "json":
        _print_json({"command": label, **summary.as_dict(), "already_in_lake": skipped})
        return
    if skipped and not summary.inputs:
        print(f"{label}: all {skipped} {what} already in the lake; nothing to do ({summary.seconds:.1f} s)")
        return
    line = f"{label}: {summary.line()} in {summary.seconds:.1f} s"
    if skipped:
        line += f"; {skipped} more {what} already in the lake, not read again"
    print(line)
    if summary.reasons:
        print(
            "  rejected by reason: "
            + ", ".join(f"{k} {v}" for k, v in sorted(summary.reasons.items(), key=lambda kv: (-kv[1], kv[0])))
        )


def _run_ingest(ctx: Ctx, source_factory: Callable[[Any], Any], label: str) -> Any:
    from corpus.ingest import ingest

    prog = Progress(
        f"ingest {label}",
        total=lambda _s: getattr(source, "total", None),
        poll_total=lambda: getattr(source, "total", None),
        poll_count=lambda: getattr(source, "converted", None),
    )
    source: Any = None
    try:
        with ctx.lake.lock(f"ingest {label}"):
            prog.phase("starting workers")
            with ctx.engine() as engine:
                source = source_factory(engine)
                prog.unit = getattr(source, "unit", "files")
                prog.phase("reading the source")
                summary = ingest(
                    ctx.lake, source, engine, ctx.ingest_config(), progress=prog, command=f"ingest {label}"
                )
                prog.done()
    finally:
        prog.done()
    _print_ingest(
        summary, f"ingest {label}", getattr(source, "skipped", 0), getattr(source, "unit", "items"), _fmt(ctx)
    )
    return summary


# ------------------------------------------------------------------ commands
def cmd_ingest_dir(ctx: Ctx) -> int:
    from corpus.sources.files import MIDI_SUFFIXES
    from corpus.sources.folder import DirSource

    a = ctx.args
    _check_path(a.path)
    _check_name(a.source)
    _check_not_empty(a.path, None, f"MIDI files ({'/'.join(MIDI_SUFFIXES)}, or archives of them)")
    _run_ingest(ctx, lambda _e: DirSource(a.path, name=a.source, license=a.license), a.source)
    return 0


def cmd_ingest_lakh(ctx: Ctx) -> int:
    from corpus.sources.lakh import LakhError, LakhSource

    _check_path(ctx.args.path)
    try:
        src = LakhSource(ctx.args.path)
        src.check_layout()
    except LakhError as exc:
        raise UserError(str(exc)) from None
    _run_ingest(ctx, lambda _e: src, "lakh")
    return 0


def cmd_ingest_lpd(ctx: Ctx) -> int:
    from corpus.sources.lpd import LpdSource, is_npz_name

    _check_path(ctx.args.path, is_npz_name)
    _check_not_empty(
        ctx.args.path,
        is_npz_name,
        "Lakh Pianoroll Dataset .npz files (lpd / lpd_5 / lpd_17); for MIDI files use ingest lakh or ingest dir",
    )
    _run_ingest(ctx, lambda e: LpdSource(ctx.args.path, engine=e), "lpd")
    return 0


def _check_not_empty(path: str, want: Callable[[str], bool] | None, expected: str) -> None:
    """One line naming what was expected, before the lake is touched, when the folder or archive holds none of it."""
    from corpus.sources.files import first_entry, is_midi_name

    if first_entry(path, want or is_midi_name) is None:
        raise UserError(f"{path!r} holds no {expected}")


def cmd_ingest_music21(ctx: Ctx) -> int:
    ingest_music21(ctx, ctx.args.limit)
    return 0


def ingest_music21(ctx: Ctx, limit: int | None) -> Any:
    from corpus.sources.music21_corpus import Music21Source

    if limit is not None and limit < 0:
        raise UserError(f"--limit must be >= 0, got {limit}")
    skip: set[str] = set()
    if ctx.lake.exists():
        rows = ctx.lake.query("SELECT source_uri FROM pieces WHERE source = 'music21'").to_pylist()
        skip = {r["source_uri"] for r in rows}
    return _run_ingest(ctx, lambda e: Music21Source(e, limit=limit, skip=skip), "music21")


def cmd_curate(ctx: Ctx) -> int:
    ctx.existing_lake()
    run_curate(ctx)
    return 0


def run_curate(ctx: Ctx) -> Any:
    from corpus.curate import curate

    a = ctx.args
    if getattr(a, "min_melody_notes", 16) < 1:
        raise UserError(f"--min-melody-notes must be >= 1, got {a.min_melody_notes}")
    st = getattr(a, "song_threshold", None)
    if st is not None and not 0.0 < st <= 1.0:
        raise UserError(f"--song-threshold must be a containment in (0, 1], got {st}")
    prog = Progress(
        "curate", count=lambda x: x.analysed + x.reanalysed + x.failed, total=lambda x: x.to_analyse, unit="pieces"
    )
    prog.phase("starting workers")
    try:
        with ctx.lake.lock("curate"), ctx.engine() as engine:
            prog.phase("finding pieces to analyse")
            s = curate(
                ctx.lake,
                engine,
                progress=prog,
                key_backend=getattr(a, "key_backend", "ours"),
                extract_melodies=getattr(a, "extract_melodies", False),
                min_melody_notes=getattr(a, "min_melody_notes", None),
                **({"song_threshold": a.song_threshold} if getattr(a, "song_threshold", None) is not None else {}),
            )
    finally:
        prog.done()
    if _fmt(ctx) == "json":
        import dataclasses

        _print_json({"command": "curate", **dataclasses.asdict(s), "seconds": round(s.seconds, 3)})
        return s
    print(f"curate: {s.line()} in {s.seconds:.1f} s")
    return s


def cmd_similar(ctx: Ctx) -> int:
    from corpus.curate import load_neardup_index
    from corpus.curation.dedup import similar

    ctx.existing_lake()

    a = ctx.args
    if a.k < 1:
        raise UserError(f"--k must be >= 1, got {a.k}")
    index = load_neardup_index(ctx.lake)
    if index is None:
        raise UserError(f"no near-duplicate index in {ctx.lake.location!r}; run 'midicorpus curate' first")
    import pyarrow.compute as pc

    matches = (
        index.ids.filter(pc.starts_with(index.ids, a.piece_id)).to_pylist() if len(a.piece_id) < 64 else [a.piece_id]
    )
    if len(matches) != 1:
        what = "no curated piece" if not matches else f"{len(matches)} curated pieces"
        raise UserError(f"{what} with id {a.piece_id!r}; give more of the sha256")
    pid = matches[0]
    hits = similar(index, pid, a.k)
    index.close()
    con = ctx.lake.connect()
    try:
        names = dict(con.execute("SELECT piece_id, any_value(source_uri) FROM pieces GROUP BY piece_id").fetchall())
        me = con.execute("SELECT dedup_cluster, song_group FROM features WHERE piece_id = ?", [pid]).fetchone()
        cluster, group = me if me else (pid, pid)
        sizes = con.execute(
            "SELECT count(*) FILTER (WHERE dedup_cluster = ?), count(*) FILTER (WHERE song_group = ?) FROM features",
            [cluster, group],
        ).fetchone()
        level = dict(
            con.execute(
                "SELECT piece_id, dedup_cluster = ? OR song_group = ? FROM features", [cluster, group]
            ).fetchall()
        )
        in_cluster = {
            r[0] for r in con.execute("SELECT piece_id FROM features WHERE dedup_cluster = ?", [cluster]).fetchall()
        }
        evidence = con.execute(
            "SELECT CASE WHEN piece_a = ? THEN track_a ELSE track_b END AS track, "
            "CASE WHEN piece_a = ? THEN piece_b ELSE piece_a END AS other, "
            "CASE WHEN piece_a = ? THEN track_b ELSE track_a END AS other_track, cosine, shared_ngrams, containment, joins "
            "FROM song_matches WHERE ? IN (piece_a, piece_b) "
            "QUALIFY row_number() OVER (PARTITION BY other ORDER BY containment DESC, shared_ngrams DESC) = 1 "
            "ORDER BY containment DESC, shared_ngrams DESC, other LIMIT ?",
            [pid, pid, pid, pid, a.k],
        ).fetchall()
        members = con.execute(
            "SELECT piece_id, joined_by FROM song_groups WHERE song_group = ? AND piece_id <> ? ORDER BY piece_id LIMIT ?",
            [group, pid, a.k],
        ).fetchall()
    finally:
        con.close()
    print(f"{pid} ({names.get(pid, '?')})")
    print(f"  dedup cluster {cluster} ({sizes[0]} pieces); song group {group} ({sizes[1]} pieces)")
    print("\nnear-duplicates (whole-piece vectors, cosine):")
    print(
        format_table(
            ["score", "level", "piece_id", "source_uri"],
            [
                (round(sc, 4), "copy" if p in in_cluster else ("song" if level.get(p) else "-"), p, names.get(p))
                for p, sc in hits
            ],
        )
    )
    print("\nsong evidence (verified track matches, rule song-v1):")
    print(
        format_table(
            ["track", "other_piece", "other_track", "cosine", "shared", "containment", "joins", "source_uri"],
            [(t, o, ot, round(c, 3), sh, round(ct, 3), j, names.get(o)) for t, o, ot, c, sh, ct, j in evidence],
        )
        if evidence
        else "(no track of this piece matches a track of another piece)"
    )
    if members:
        print(f"\nsong group members ({len(members)} shown):")
        print(format_table(["piece_id", "joined_by", "source_uri"], [(p, j, names.get(p)) for p, j in members]))
    return 0


def cmd_tokenize(ctx: Ctx) -> int:
    ctx.existing_lake()
    a = ctx.args
    schemes = [x.strip() for x in a.scheme.split(",") if x.strip()]
    if a.config:
        _check_file(a.config)
        if len(schemes) != 1:
            raise UserError("--config registers one tokenizer: give one --scheme NAME for it")
    run_tokenize(ctx, schemes, a.transpose, a.config, a.min_key_confidence, a.redo_bars)
    return 0


def run_tokenize(
    ctx: Ctx,
    schemes: list[str],
    transpose: str = "none",
    config: str | None = None,
    min_conf: float | None = None,
    redo_bars: bool = False,
) -> Any:
    from corpus.tokenize import presets
    from corpus.tokenize.stage import DEFAULT_MIN_KEY_CONFIDENCE, TokenizeError, parse_transpose, tokenize

    try:
        parse_transpose(transpose)
    except (TokenizeError, presets.PresetError) as exc:
        raise UserError(str(exc)) from None
    prog = Progress(
        "tokenize",
        count=lambda x: x.done,
        text=lambda x: f"{x.done} done ({x.schemes[-1].scheme if x.schemes else ''})",
        total=lambda x: x.total,
        unit="pieces",
    )
    prog.phase("starting workers")
    try:
        with ctx.lake.lock("tokenize"), ctx.engine() as engine:
            prog.phase("finding pieces to tokenize")
            try:
                s = tokenize(
                    ctx.lake,
                    engine,
                    schemes,
                    transpose,
                    config,
                    DEFAULT_MIN_KEY_CONFIDENCE if min_conf is None else min_conf,
                    progress=prog,
                    redo_bars=redo_bars,
                )
            except (TokenizeError, presets.PresetError) as exc:
                raise UserError(str(exc)) from None
    finally:
        prog.done()
    if _fmt(ctx) == "json":
        import dataclasses

        _print_json(
            {
                "command": "tokenize",
                "schemes": [dataclasses.asdict(x) for x in s.schemes],
                "done": s.done,
                "seconds": round(s.seconds, 3),
            }
        )
        return s
    for line in s.lines():
        print(f"tokenize {line}")
    print(f"tokenize: {s.seconds:.1f} s")
    return s


def cmd_tokenizer_train(ctx: Ctx) -> int:
    from corpus.tokenize.stage import TokenizeError, train_tokenizer

    ctx.existing_lake()

    a = ctx.args
    t0 = time.perf_counter()
    with ctx.lake.lock("tokenizer train"):
        try:
            reg = train_tokenizer(ctx.lake, a.scheme, a.vocab_size, a.model, a.where)
        except TokenizeError as exc:
            raise UserError(str(exc)) from None
    print(
        f"tokenizer train: registered {reg.scheme} [{reg.hash}] in {time.perf_counter() - t0:.1f} s; "
        f"use it with: midicorpus tokenize --scheme {reg.scheme}"
    )
    return 0


def _check_file(path: str) -> None:
    if not Path(path).is_file():
        raise UserError(f"no such file: {path!r}")


def cmd_crawl_mutopia(ctx: Ctx) -> int:
    from corpus.sources import mutopia

    a = ctx.args
    opts: dict[str, Any] = {
        "base_url": a.base_url or mutopia.DEFAULT_BASE_URL,
        "max_pieces": a.max_pieces,
        "delay": mutopia.DEFAULT_DELAY if a.delay is None else a.delay,
        "user_agent": a.user_agent or mutopia.DEFAULT_USER_AGENT,
    }
    if a.max_bytes is not None:
        opts["max_bytes"] = a.max_bytes
    if a.new:
        opts["mode"] = "new"
    prog = Progress("crawl mutopia", unit="pieces")
    prog.phase("starting workers")
    try:
        with ctx.lake.lock("crawl mutopia"), ctx.engine() as engine:
            prog.phase("fetching")
            try:
                summary, stats = mutopia.crawl(ctx.lake, engine, config=ctx.ingest_config(), progress=prog, **opts)
            except ValueError as exc:
                raise UserError(str(exc)) from None
            prog.done()
    finally:
        prog.done()
    _print_ingest(summary, "crawl mutopia")
    print(f"crawl mutopia: {stats.line()}")
    return 0


def _snap_errors() -> tuple[type[Exception], ...]:
    from corpus.snapshot import SnapshotError

    return (SnapshotError,)


def cmd_snapshot_create(ctx: Ctx) -> int:
    from corpus import snapshot

    ctx.existing_lake()

    a = ctx.args
    try:
        spec = snapshot.SnapshotSpec(
            name=a.name,
            scheme=a.scheme,
            where=a.where,
            transpose=a.transpose,
            split=snapshot.parse_split(a.split),
            seed=a.seed,
            max_seq_len=a.max_seq_len,
            tokenizer_hash=a.tokenizer,
            with_midi=a.with_midi,
            segment=snapshot.parse_segment(a.segment) if a.segment else None,
            mix=snapshot.parse_mix(a.mix) if a.mix else None,
            mix_by=a.mix_by,
        )
        spec.validate()
        res = _snapshot_create(ctx, spec)
    except snapshot.SnapshotError as exc:
        raise UserError(str(exc)) from None
    if _fmt(ctx) == "json":
        _print_json(res.as_dict())
    else:
        print(res.line())
    return 0


def _snapshot_create(ctx: Ctx, spec: Any) -> Any:
    """snapshot.create under the lake's lock, with progress (tokens written of the total)."""
    from corpus import snapshot

    prog = _step_progress(f"snapshot create {spec.name}", "tokens", unit_scale=True)
    try:
        with ctx.lake.lock("snapshot create"):
            return snapshot.create(ctx.lake, spec, progress=prog)
    finally:
        prog.done()


def cmd_snapshot_list(ctx: Ctx) -> int:
    from corpus import snapshot

    ctx.existing_lake()

    rows = snapshot.list_snapshots(ctx.lake)
    if _fmt(ctx) == "json":
        _print_json(rows)
        return 0
    if not rows:
        print("no snapshots")
        return 0
    names = list(rows[0])
    print(format_table(names, [tuple(r[n] for n in names) for r in rows]))
    return 0


def cmd_snapshot_show(ctx: Ctx) -> int:
    from corpus import snapshot

    ctx.existing_lake()

    try:
        print(snapshot.show(ctx.lake, ctx.args.ref))
    except snapshot.SnapshotError as exc:
        raise UserError(str(exc)) from None
    return 0


def cmd_snapshot_diff(ctx: Ctx) -> int:
    from corpus import snapshot

    ctx.existing_lake()

    try:
        print(snapshot.diff_text(snapshot.diff(ctx.lake, ctx.args.a, ctx.args.b)))
    except snapshot.SnapshotError as exc:
        raise UserError(str(exc)) from None
    return 0


def cmd_snapshot_verify(ctx: Ctx) -> int:
    from corpus import snapshot

    ctx.existing_lake()

    try:
        res = snapshot.verify(ctx.lake, ctx.args.ref)
    except snapshot.SnapshotError as exc:
        raise UserError(str(exc)) from None
    print(res.line())
    return 0 if res.ok else 1


def cmd_train(ctx: Ctx) -> int:
    from corpus import snapshot

    ctx.existing_lake()

    a = ctx.args
    if a.steps < 1:
        raise UserError(f"--steps must be >= 1, got {a.steps}")
    try:
        path = snapshot.local_snapshot(ctx.lake, a.snapshot)  # an object-store lake: a verified, cached copy
    except snapshot.SnapshotError as exc:
        raise UserError(str(exc)) from None
    if ctx.lake.remote:
        print(f"train: {path.parent.name}@{path.name} of {ctx.lake.location}, local copy in {path}")
    from train.loop import TrainConfig, TrainError, train

    out = Path(a.out) if a.out else local_home(ctx.lake) / "runs" / f"{path.parent.name}-{path.name}"
    cfg = TrainConfig(
        steps=a.steps,
        batch_size=a.batch_size,
        seq_len=a.seq_len,
        num_workers=a.loader_workers,
        compile=not a.no_compile,
    )
    try:
        m = train(path, out, cfg, device=a.device)
    except TrainError as exc:
        raise UserError(str(exc)) from None
    if a.format == "json":
        print(json.dumps({**m, "out": str(out)}, default=str))
        return 0
    print(train_line(m, out))
    if m.get("steps_this_run"):
        print(f"train: run in {out} (metrics.json, checkpoint.pt, generated.mid)")
    return 0


def train_line(m: dict[str, Any], out: Path) -> str:
    """The training result for people: rounded figures, or what was skipped and where it is."""

    def r(x: Any, nd: int = 3) -> str:
        return "-" if x is None else f"{x:.{nd}f}"

    loss = f"loss {r(m.get('train_loss_first'))} -> {r(m.get('train_loss_last'))}, valid {r(m.get('valid_loss'))}"
    if not m.get("steps_this_run"):
        return f"train: skipped, the run at {out} already has {m['steps']} steps ({loss}); give --steps N for more or another --out"
    wait = m.get("data_wait_share")
    return (
        f"train: {m['device']}, {m['steps_this_run']} steps"
        + (f" (now {m['steps']} in all)" if m["steps"] != m["steps_this_run"] else "")
        + f", {loss}, "
        f"{m['tokens_per_s'] or 0:,.0f} tokens/s, data wait {0 if wait is None else wait * 100:.1f} %"
        + (
            "; mixture per epoch: "
            + ", ".join(f"{k} {v['share']:.1%} (x{v['repeats']:.2f})" for k, v in m["mix"].items())
            if m.get("mix")
            else ""
        )
    )


def cmd_bench(ctx: Ctx) -> int:
    from corpus import bench

    a = ctx.args
    files = Path(a.files) if a.files else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not files.is_dir():
        raise UserError(f"no such folder: {str(files)!r} (give --files DIR)")
    workers = ctx.args.workers or 2
    if a.lakehouse is not None:
        return _bench_lakehouse(a, files, workers)
    if a.key_accuracy:
        arr = files.parent / "arrangements"
        acc = bench.bench_key_accuracy(files, arr if arr.is_dir() else None)
        print(bench.format_key_accuracy(acc))
        if a.out:
            Path(a.out).write_text(json.dumps({"key_accuracy": acc}, indent=2, default=str) + "\n")
        return 0
    arrangements = files.parent / "arrangements"
    if a.chords:
        return _bench_chords(a, arrangements, files)
    result = bench.run_bench(files, Path(a.out) if a.out else None, workers, key_files=a.key_files)
    from corpus import bench_curation

    print("curation checks (performed or quantized, track roles)...")
    result["curation"] = bench_curation.run_curation(files, arrangements if arrangements.is_dir() else None)
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=2, default=str) + "\n")
    if arrangements.is_dir():
        from corpus import bench_chords, bench_songs

        print("song identity...")
        result["song_identity"] = bench_songs.run_songs(arrangements, files, workers)
        print("chord labels vs human labels and music21...")
        result["chords"] = bench_chords.run_chords(arrangements, files)
        if a.scale:
            print("song identity, nightly delta on a 20,000-piece synthetic lake...")
            result["song_identity"]["delta"] = bench_songs.run_delta(20_000, 200, files, workers)
        if a.out:
            Path(a.out).write_text(json.dumps(result, indent=2, default=str) + "\n")
    if a.scale:
        out = Path(a.out).with_name(Path(a.out).stem + "-scale.json") if a.out else None
        bench.run_scale(src_dir=files, workers=workers, out=out)
        print("lakehouse: the scheduled-corpus commands on a 20,000-piece synthetic lake...")
        lh_out = Path(a.out).with_name(Path(a.out).stem + "-lakehouse.json") if a.out else None
        from corpus import bench_lakehouse

        bench_lakehouse.run_lakehouse(20_000, 200, src_dir=files, workers=workers, out=lh_out)
    return 0


def _bench_chords(a: argparse.Namespace, arrangements: Path, files: Path) -> int:
    """``bench --chords``: only the chord-label comparisons (POP909 human labels, music21's chordify)."""
    from corpus import bench_chords

    if not arrangements.is_dir():
        raise UserError(f"--chords needs the POP909 arrangements beside the files: no folder {str(arrangements)!r}")
    res = bench_chords.run_chords(arrangements, files)
    if a.out:
        Path(a.out).write_text(json.dumps({"chords": res}, indent=2, default=str) + "\n")
    return 0


def _bench_lakehouse(a: argparse.Namespace, files: Path, workers: int) -> int:
    """``bench --lakehouse N``: only the lakehouse table (every command of a scheduled corpus, N pieces)."""
    from corpus import bench_lakehouse

    if a.lakehouse < 1:
        raise UserError(f"--lakehouse takes a number of pieces >= 1, got {a.lakehouse}")
    earlier = None
    if a.compare:
        try:
            earlier = json.loads(Path(a.compare).read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"--compare: cannot read {a.compare!r}: {exc}") from None
    work = Path(a.work_dir) if a.work_dir else None
    res = bench_lakehouse.run_lakehouse(
        a.lakehouse,
        a.delta,
        src_dir=files,
        workers=workers,
        work_dir=work,
        out=Path(a.out) if a.out else None,
        keep=work is not None,
    )
    if earlier is not None:
        print(bench_lakehouse.compare(earlier, res))
    return 0 if all(r["rc"] == 0 for r in res["rows"]) else 1


def cmd_report(ctx: Ctx) -> int:
    from reports import ReportError, write_report

    ctx.existing_lake()

    prog = _step_progress("report", "queries")
    try:
        index = write_report(ctx.lake, ctx.args.out or local_home(ctx.lake) / "report", progress=prog)
    except ReportError as exc:
        raise UserError(str(exc)) from None
    finally:
        prog.done()
    print(f"report: {index}")
    return 0


def cmd_serve(ctx: Ctx) -> int:
    from flows.config import ConfigError
    from flows.serve import serve

    a = ctx.args
    lake = a.lake or os.environ.get("MIDICORPUS_LAKE")  # None: the config file's lake
    try:
        return int(serve(a.config, lake=lake, scheduler=a.scheduler, workers=a.workers, run_once=a.once, check=a.check))
    except ConfigError as exc:
        raise UserError(str(exc)) from None


USER_VIEWS = (
    "pieces",
    "rejects",
    "tracks",
    "features",
    "song_groups",
    "song_matches",
    "track_signatures",
    "chords",
    "tokens",
    "tokenizers",
    "snapshots",
    "snapshot_pieces",
)  # the views the README documents (schemas/views.sql)
READ_ONLY_STATEMENTS = ("SELECT", "EXPLAIN")  # SELECT covers WITH, FROM-first, VALUES, SHOW, DESCRIBE, SUMMARIZE


def cmd_sql(ctx: Ctx) -> int:
    import duckdb

    a = ctx.args
    if not a.query.strip():
        raise UserError('empty SQL; give a query, e.g. midicorpus sql "SELECT count(*) FROM pieces"')
    parser = duckdb.connect()  # the statements are checked before the lake is opened (or found missing)
    try:
        statements = parser.extract_statements(a.query)
    except duckdb.Error as exc:
        raise UserError(f"SQL error: {_one_line(str(exc))}") from None
    finally:
        parser.close()
    if not statements:
        raise UserError(
            'empty SQL (only comments or semicolons); give a query, e.g. midicorpus sql "SELECT count(*) FROM pieces"'
        )
    for st in statements:
        kind = str(st.type).rsplit(".", 1)[-1]
        if kind not in READ_ONLY_STATEMENTS:
            raise UserError(
                f"sql is read-only: {_one_line(st.query)[:60]!r} is a {kind} statement; "
                "use SELECT, WITH, SHOW, DESCRIBE, SUMMARIZE or EXPLAIN (the lake changes only through midicorpus commands)"
            )
    ctx.existing_lake()
    at = None
    if a.at is not None:
        if a.at.isdigit():
            at = int(a.at)
        else:
            from corpus import snapshot

            try:
                at = snapshot.lake_version_of(ctx.lake, a.at)
            except snapshot.SnapshotError as exc:
                raise UserError(str(exc)) from None
    con = ctx.lake.connect(at=at)
    try:
        try:
            rel = con.sql(a.query)
        except duckdb.Error as exc:
            raise UserError(f"SQL error: {_one_line(str(exc))}") from None
        if rel is None:
            return 0
        try:
            names = rel.columns
            rows = rel.fetchall()
        except duckdb.Error as exc:
            raise UserError(f"SQL error: {_one_line(str(exc))}") from None
    finally:
        con.close()
    print(render(names, rows, a.format))
    return 0


def _need_lake(ctx: Ctx) -> None:
    if not ctx.lake.exists():
        raise UserError(f"no lake at {ctx.lake.location!r} (create one with 'midicorpus ingest ...' or give --lake)")


def cmd_lake_versions(ctx: Ctx) -> int:
    _need_lake(ctx)
    rows = ctx.lake.commits()[-max(1, ctx.args.last) :]
    if _fmt(ctx) == "json":
        _print_json(
            [
                {
                    "version": r["snapshot_id"],
                    "committed_at": r["committed_at"],
                    "command": r["meta"].get("command") or r["meta"].get("stage") or "",
                    "rows_written": dict(sorted(r["tables"].items())),
                }
                for r in rows
            ]
        )
        return 0
    out = [
        (
            r["snapshot_id"],
            r["committed_at"][:19].replace("T", " "),
            r["meta"].get("command") or r["meta"].get("stage") or "",
            ", ".join(f"{t} {n:,}" for t, n in sorted(r["tables"].items())),
        )
        for r in rows
    ]
    print(render(["version", "committed_at (UTC)", "command", "rows written"], out, "table"))
    return 0


def cmd_lake_maintain(ctx: Ctx) -> int:
    from corpus import snapshot

    _need_lake(ctx)
    if ctx.args.keep_days < 0:
        raise UserError(f"--keep-days must be >= 0, got {ctx.args.keep_days:g}")
    t0 = time.perf_counter()
    with ctx.lake.lock("lake maintain"):
        res = snapshot.maintain_lake(ctx.lake, ctx.args.keep_days)
    print(snapshot.maintain_line(res, time.perf_counter() - t0))
    return 0


def cmd_lake_shell(ctx: Ctx) -> int:
    """The DuckDB shell on the lake's views (or, with --print, the SQL that opens them anywhere)."""
    import shutil
    import subprocess

    _need_lake(ctx)
    init = ctx.lake.shell_sql()
    if ctx.args.print:
        print(init)
        return 0
    exe = shutil.which("duckdb", path=str(Path(sys.executable).parent)) or shutil.which("duckdb")
    if exe is None:
        raise UserError("no DuckDB shell found: pip install duckdb-cli==1.5.5 (it comes with midicorpus)")
    if ctx.lake.remote:  # the S3 secret of this process, for the shell's session only
        from corpus import objectstore

        init = objectstore._s3_secret_sql() + ";\n" + init
    extra = ["-c", ctx.args.command] if ctx.args.command else []
    return subprocess.call([exe, "-cmd", init.replace("\n", " "), *extra])


def cmd_lake_upgrade(ctx: Ctx) -> int:
    from corpus.lake_upgrade import _main_line, upgrade

    t0 = time.perf_counter()
    res = upgrade(ctx.lake.location, ctx.args.catalog)
    print(f"{_main_line(res, ctx.lake.location)} in {time.perf_counter() - t0:.1f} s")
    return 0


def local_home(lake: Any) -> Path:
    """Where local outputs of a run go: the lake's folder, or the working folder for an object store."""
    return Path.cwd() if lake.remote else lake.root


def cmd_run(ctx: Ctx) -> int:
    """The whole pipeline on the embedded default (the music21 corpus)."""
    t0 = time.perf_counter()
    print(f"midicorpus run: lake {ctx.lake.location}")
    ingest_music21(ctx, ctx.args.limit)
    run_curate(ctx)
    run_tokenize(ctx, ["remi"])
    run_snapshot_and_train(ctx)
    from reports import write_report

    # the report and the training run are local files: beside a local lake, in ./ for an object store
    prog = _step_progress("report", "queries")
    try:
        index = write_report(ctx.lake, local_home(ctx.lake) / "report", progress=prog)
    finally:
        prog.done()
    print(f"report: {index}")
    print(f"\nsummary ({time.perf_counter() - t0:.1f} s):")
    for title, q in RUN_QUERIES:
        print(f"\n-- {title}\n{q}")
        con = ctx.lake.connect()
        try:
            rel = con.sql(q)
            print(format_table(rel.columns, rel.fetchall()))
        finally:
            con.close()
    return 0


def run_snapshot_and_train(ctx: Ctx) -> None:
    """The default snapshot of the run, and a short training run on it (CPU or GPU)."""
    from corpus import snapshot
    from train.loop import TrainConfig, train

    spec = snapshot.SnapshotSpec(name="default", scheme="remi")
    res = _snapshot_create(ctx, spec)
    print(res.line())
    out = local_home(ctx.lake) / "runs" / f"default-{res.version}"
    m = train(res.path, out, TrainConfig(steps=ctx.args.train_steps, batch_size=8, seq_len=256), device="auto")
    print(train_line(m, out) + ("" if not m.get("steps_this_run") else f" ({out})"))


RUN_QUERIES = [
    (
        "pieces per source and status",
        "SELECT source, status, count(*) AS items, count(DISTINCT piece_id) AS pieces\n"
        "FROM pieces GROUP BY ALL ORDER BY ALL;",
    ),
    (
        "pieces with more than 500 notes, by texture and key mode (distinct songs: one per dedup cluster)",
        "SELECT texture, key_mode, count(*) AS pieces, count(DISTINCT dedup_cluster) AS songs,\n"
        "       round(sum(duration_s) / 3600, 2) AS hours\n"
        "FROM features WHERE n_notes > 500 GROUP BY ALL ORDER BY pieces DESC;",
    ),
]


# ------------------------------------------------------------------ validation
def _check_path(path: str, want: Callable[[str], bool] | None = None) -> None:
    from corpus.sources.files import check_root, is_midi_name

    try:
        check_root(path, want or is_midi_name)
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from None


def _check_name(name: str) -> None:
    import re

    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name or ""):
        raise UserError(f"--source must be letters, digits, '_', '-' or '.', got {name!r}")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {s!r}")
    return v


def _workers(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of workers, got {s!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more workers, got {s!r}")
    return v


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def _format_option(
    parser: argparse.ArgumentParser, text: str = "json: the summary as one JSON object (default text)"
) -> None:
    parser.add_argument("--format", choices=["text", "json"], default="text", help=text)


def build_parser() -> argparse.ArgumentParser:
    from corpus import __version__

    p = _Parser(prog="midicorpus", description="Build, curate, tokenize and snapshot MIDI corpora.")
    p.add_argument("--version", action="version", version=f"midicorpus {__version__}")
    p.add_argument(
        "--lake", default=None, help="lake root (env MIDICORPUS_LAKE, default ./lake; serve: the config file's)"
    )
    p.add_argument(
        "--catalog",
        default=None,
        help="DuckLake catalog of an object-store lake, postgres://USER@HOST:PORT/DB (env MIDICORPUS_CATALOG); "
        "a local lake's is its catalog.sqlite",
    )
    p.add_argument(
        "--scheduler",
        default=os.environ.get("MIDICORPUS_SCHEDULER"),
        help="Dask scheduler address tcp://HOST:PORT (env MIDICORPUS_SCHEDULER); default a LocalCluster",
    )
    p.add_argument(
        "--workers",
        type=_workers,
        default=None,
        help="LocalCluster worker processes (default: one per core; 0 = in this process)",
    )
    p.add_argument(
        "--timeout", type=_positive_float, default=20.0, help="per-file parse time limit in seconds (default 20)"
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    ing = sub.add_parser("ingest", help="ingest a source into the lake")
    isub = ing.add_subparsers(dest="kind", metavar="SOURCE", parser_class=_Parser)
    isub.required = True
    strict_help = "reject files that violate the MIDI spec even when they parse (recorded as the policy)"
    dir_help = (
        "any folder or archive of MIDI files (.mid/.midi/.kar/.rmi; archives .zip, .tar, .tar.gz/.tgz, "
        ".tar.bz2/.tbz2, .tar.xz/.txz, also inside the folder)"
    )
    d = isub.add_parser("dir", help=dir_help, description=f"Ingest {dir_help}.")
    d.add_argument("path", help="a folder, an archive or one MIDI file")
    d.add_argument("--source", default="dir", help="value of the source column (default 'dir')")
    d.add_argument(
        "--license", default=None, help="licence of these files, recorded per piece (default: none recorded)"
    )
    d.add_argument("--strict", action="store_true", help=strict_help)
    _format_option(d)
    d.set_defaults(func=cmd_ingest_dir)
    lk = isub.add_parser("lakh", help="the Lakh MIDI Dataset (lmd_full / lmd_matched / lmd_aligned, folder or .tar.gz)")
    lk.add_argument(
        "path", help="lmd_full / lmd_matched / lmd_aligned, a folder or .tar.gz (sidecar JSON files beside it are read)"
    )
    lk.add_argument("--strict", action="store_true", help=strict_help)
    _format_option(lk)
    lk.set_defaults(func=cmd_ingest_lakh)
    lp = isub.add_parser("lpd", help="the Lakh Pianoroll Dataset (.npz files, folder or .tar.gz)")
    lp.add_argument(
        "path", help="a folder or archive of LPD .npz files (lpd / lpd_5 / lpd_17; full / matched / cleansed)"
    )
    lp.add_argument("--strict", action="store_true", help=strict_help)
    _format_option(lp)
    lp.set_defaults(func=cmd_ingest_lpd)
    m = isub.add_parser("music21", help="the public-domain corpus bundled with music21, converted to MIDI")
    m.add_argument("--limit", type=int, default=300, help="number of corpus works (default 300)")
    m.add_argument("--strict", action="store_true", help=strict_help)
    _format_option(m)
    m.set_defaults(func=cmd_ingest_music21)

    c = sub.add_parser("curate", help="texture, key and duplicate clusters for pieces not yet curated")
    c.add_argument(
        "--extract-melodies",
        action="store_true",
        help="ingest each monophonic pitched track of a polyphonic piece as a derived piece (source 'melody'), then curate it",
    )
    c.add_argument(
        "--min-melody-notes", type=int, default=16, help="fewest notes a track needs to be extracted (default 16)"
    )
    c.add_argument(
        "--key-backend",
        choices=["ours", "music21"],
        default="ours",
        help="whole-piece key: ours (fast, agrees with music21) or music21's own analyze('key') (~2.5 s/file); "
        "applies to pieces not yet curated (default ours)",
    )
    c.add_argument(
        "--song-threshold",
        type=float,
        default=None,
        help="containment at which a verified track match joins two pieces in one song group "
        "(rule song-v1, default 0.65); re-decides from stored matches, nothing is analysed again",
    )
    _format_option(c)
    c.set_defaults(func=cmd_curate)

    cr = sub.add_parser("crawl", help="crawl a website source")
    crsub = cr.add_subparsers(dest="site", metavar="SITE", parser_class=_Parser)
    crsub.required = True
    mu = crsub.add_parser(
        "mutopia", help="the Mutopia Project (robots.txt obeyed, one request at a time, conditional re-crawl)"
    )
    mu.add_argument("--base-url", default=None, help="site root (default the real Mutopia Project)")
    mu.add_argument(
        "--max-pieces", type=int, default=None, help="stop after this many pieces in this run (default: no limit)"
    )
    mu.add_argument(
        "--max-bytes",
        type=int,
        default=None,
        help="stop after fetching this many bytes in this run (default: no limit)",
    )
    mu.add_argument(
        "--delay",
        type=float,
        default=None,
        help="seconds between requests (default 1; robots.txt Crawl-delay can raise it)",
    )
    mu.add_argument("--user-agent", default=None, help="User-Agent with a contact (default names midicorpus)")
    mu.add_argument(
        "--new",
        action="store_true",
        help="only pieces newer than the last crawl's highest id (from latestadditions.rss)",
    )
    mu.add_argument(
        "--strict", action="store_true", help="reject files that violate the MIDI spec even when they parse"
    )
    mu.set_defaults(func=cmd_crawl_mutopia)

    sn = sub.add_parser("snapshot", help="immutable, versioned dataset snapshots")
    snsub = sn.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    snsub.required = True
    sc = snsub.add_parser("create", help="build a snapshot (same lake + selection + seed = same version and bytes)")
    sc.add_argument("name", help="snapshot name (letters, digits, '_', '-', '.')")
    sc.add_argument(
        "--scheme",
        required=True,
        help='a tokenized scheme, e.g. remi (see: midicorpus sql "SELECT DISTINCT scheme FROM tokens")',
    )
    sc.add_argument(
        "--where", default=None, help="SQL condition over features/pieces columns, e.g. \"texture = 'polyphonic'\""
    )
    sc.add_argument(
        "--transpose", default="none", help="none | normalize | augment:K (rows must have been tokenized; default none)"
    )
    sc.add_argument("--split", default="0.9,0.05,0.05", help="train,valid,test fractions (default 0.9,0.05,0.05)")
    sc.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    sc.add_argument(
        "--max-seq-len",
        type=int,
        default=None,
        help="cut sequences into windows of at most this many tokens (default: whole pieces)",
    )
    sc.add_argument("--tokenizer", default=None, help="tokenizer hash (default: the latest registered under --scheme)")
    sc.add_argument(
        "--with-midi",
        action="store_true",
        help="add each piece's original MIDI bytes (column midi) to the Hugging Face Parquet files",
    )
    sc.add_argument(
        "--segment",
        default=None,
        metavar="bars:N[:HOP]",
        help="cut every piece into windows of N bars every HOP bars (default HOP = N), e.g. bars:2, bars:16, "
        "bars:16:8; --max-seq-len then cuts at bar lines",
    )
    sc.add_argument(
        "--mix",
        default=None,
        metavar="LABEL=W,...",
        help="training sampling weights per label (summing to 1), e.g. lakh=0.5,mutopia=0.3,music21=0.2; "
        "the loader draws train windows by them (valid and test are not re-weighted)",
    )
    sc.add_argument(
        "--mix-by",
        default=None,
        metavar="SQL",
        help="the label --mix weighs: an SQL expression over features/pieces columns (default: source)",
    )
    _format_option(sc)
    sc.set_defaults(func=cmd_snapshot_create)
    sl = snsub.add_parser("list", help="every snapshot version")
    _format_option(sl, "json: a JSON list of objects, one per version (default text)")
    sl.set_defaults(func=cmd_snapshot_list)
    ss = snsub.add_parser("show", help="a snapshot's card")
    ss.add_argument(
        "ref", metavar="NAME[@VERSION]", help="a snapshot name, with a version for one that is not the latest"
    )
    ss.set_defaults(func=cmd_snapshot_show)
    sd = snsub.add_parser("diff", help="pieces and tokens added / removed between two versions")
    sd.add_argument("a", metavar="NAME@VERSION", help="the older version")
    sd.add_argument("b", metavar="NAME@VERSION", help="the newer version")
    sd.set_defaults(func=cmd_snapshot_diff)
    sv = snsub.add_parser("verify", help="re-hash every shard against the manifest")
    sv.add_argument(
        "ref", metavar="NAME[@VERSION]", help="a snapshot name, with a version for one that is not the latest"
    )
    sv.set_defaults(func=cmd_snapshot_verify)

    tr = sub.add_parser("train", help="train a small decoder-only transformer on a snapshot")
    tr.add_argument(
        "--snapshot",
        required=True,
        metavar="NAME[@VERSION]",
        help="the snapshot to train on (see: midicorpus snapshot list)",
    )
    tr.add_argument(
        "--steps", type=int, default=200, help="optimizer steps in all; a run with a checkpoint resumes (default 200)"
    )
    tr.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CUDA when present (default auto)"
    )
    tr.add_argument(
        "--out",
        default=None,
        help="run folder (default LAKE/runs/<name>-<version>; ./runs/... for an object-store lake)",
    )
    tr.add_argument("--batch-size", type=int, default=8, help="sequences per step (default 8)")
    tr.add_argument("--seq-len", type=int, default=256, help="tokens per sequence (default 256)")
    tr.add_argument("--loader-workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    tr.add_argument("--no-compile", action="store_true", help="skip torch.compile on CUDA")
    tr.add_argument(
        "--format", choices=["text", "json"], default="text", help="json: the metrics as one JSON object (default text)"
    )
    tr.set_defaults(func=cmd_train)

    b = sub.add_parser("bench", help="the performance benchmark: prints a table, writes JSON")
    b.add_argument("--files", default=None, help="folder of MIDI files (default ../shared/data)")
    b.add_argument("--out", default=None, help="JSON output file (default: the table only)")
    b.add_argument(
        "--key-files", type=int, default=40, help="files for the music21 comparison (slow: ~2.5 s each; default 40)"
    )
    b.add_argument(
        "--scale", action="store_true", help="also the synthetic 2k/5k/20k scale run and the 20k lakehouse table (long)"
    )
    b.add_argument(
        "--key-accuracy",
        action="store_true",
        help="only the key accuracy table against human labels (pop909, goldberg, chorales, monteverdi; about 90 s)",
    )
    b.add_argument(
        "--lakehouse",
        type=int,
        default=None,
        metavar="N",
        help="only the lakehouse table: every command of a scheduled corpus on N synthetic pieces, each as its own "
        "process, wall time and driver peak RSS (Lakh-sized: 176581, about an hour here)",
    )
    b.add_argument(
        "--chords",
        action="store_true",
        help="only the chord labels: accuracy per beat against POP909's human labels (tuning and held-out halves) "
        "and agreement with music21's chordify (about 20 s)",
    )
    b.add_argument("--delta", type=int, default=200, help="with --lakehouse: pieces of the nightly delta (default 200)")
    b.add_argument(
        "--work-dir", default=None, help="with --lakehouse: keep the files and the lake here (files reused if present)"
    )
    b.add_argument("--compare", default=None, help="with --lakehouse: the JSON of an earlier run (--out): print ratios")
    b.set_defaults(func=cmd_bench)

    sim = sub.add_parser(
        "similar",
        help="a piece's dedup cluster and song group, its nearest pieces and the track matches behind its group",
    )
    sim.add_argument("piece_id", help="a piece's sha256 (a unique prefix is enough)")
    sim.add_argument("--k", type=int, default=10, help="rows per table (default 10)")
    sim.set_defaults(func=cmd_similar)

    t = sub.add_parser("tokenize", help="tokenize curated pieces under one or more schemes")
    t.add_argument(
        "--scheme",
        required=True,
        help="comma-separated presets (remi,tsd,midilike,structured,cpword,octuple,mumidi,mmm,pertok,remi_multitrack,tsd_multitrack,performance,note_duration)",
    )
    t.add_argument(
        "--transpose",
        default="none",
        help="none | normalize (to C major / A minor) | augment:K (the +-1..K semitone copies too; default none)",
    )
    t.add_argument(
        "--config", default=None, help="a miditok tokenizer.json to register under --scheme NAME (default: the preset)"
    )
    t.add_argument(
        "--min-key-confidence",
        type=float,
        default=None,
        help="normalize only pieces whose key confidence is at least this (default 0.02; 0 = all)",
    )
    t.add_argument(
        "--redo-bars",
        action="store_true",
        help="re-tokenize the rows made before bar starts were stored (for snapshot create --segment); same ids",
    )
    _format_option(t)
    t.set_defaults(func=cmd_tokenize)

    tk = sub.add_parser("tokenizer", help="train and register tokenizers")
    tksub = tk.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    tksub.required = True
    tt = tksub.add_parser(
        "train", help="train a subword vocabulary (BPE/Unigram) on the corpus; registers '<scheme>-<model><N>'"
    )
    tt.add_argument("--scheme", required=True, help="the base scheme, e.g. remi")
    tt.add_argument("--vocab-size", type=int, required=True, help="size of the trained vocabulary")
    tt.add_argument("--model", choices=["bpe", "unigram", "wordpiece"], default="bpe", help="(default bpe)")
    tt.add_argument(
        "--where", default=None, help="SQL condition over features selecting the training pieces (default: all)"
    )
    tt.set_defaults(func=cmd_tokenizer_train)

    s = sub.add_parser(
        "sql",
        help="run read-only SQL over the lake's DuckDB views",
        description="Read-only SQL (SELECT, WITH, SHOW, DESCRIBE, SUMMARIZE, EXPLAIN) over the lake's views: "
        + ", ".join(USER_VIEWS)
        + '. Columns: midicorpus sql "DESCRIBE features". Views ending in _t or _latest are internal building blocks.',
    )
    s.add_argument("query", help='e.g. "SELECT source, status, count(*) FROM pieces GROUP BY ALL"')
    s.add_argument("--format", choices=["table", "csv", "json"], default="table", help="(default table)")
    s.add_argument(
        "--at",
        default=None,
        metavar="VERSION|SNAPSHOT",
        help="query the lake as it was: a lake version (DuckLake snapshot id) or a dataset snapshot NAME[@VERSION]",
    )
    s.set_defaults(func=cmd_sql)

    lm = sub.add_parser("lake", help="the lake itself: versions, maintenance, upgrade")
    lmsub = lm.add_subparsers(dest="lake_command", metavar="ACTION", parser_class=_Parser)
    lmsub.required = True
    lmv = lmsub.add_parser("versions", help="every committed lake version (DuckLake snapshot) with what it wrote")
    lmv.add_argument("--last", type=int, default=20, help="show the newest N (default 20)")
    _format_option(lmv, "json: a JSON list of objects, one per version, rows written per table (default text)")
    lmv.set_defaults(func=cmd_lake_versions)
    lmm = lmsub.add_parser(
        "maintain", help="compact small files, expire old versions (keeping those snapshots use), delete unread files"
    )
    lmm.add_argument("--keep-days", type=float, default=7.0, help="keep every version younger than this (default 7)")
    lmm.set_defaults(func=cmd_lake_maintain)
    lsh = lmsub.add_parser(
        "shell",
        help="the DuckDB shell on the lake's views (read-only); --print: the SQL that opens them in any DuckDB",
    )
    lsh.add_argument("--print", action="store_true", help="print the statements instead of starting the shell")
    lsh.add_argument("-c", "--command", default=None, help="run this SQL in the shell and exit (duckdb -c)")
    lsh.set_defaults(func=cmd_lake_shell)
    lmu = lmsub.add_parser("upgrade", help="move a lake of the layout before DuckLake (tables/ + _log/) into DuckLake")
    lmu.set_defaults(func=cmd_lake_upgrade)

    rp = sub.add_parser("report", help="static HTML corpus report with plots (every figure with its SQL)")
    rp.add_argument(
        "--out", default=None, help="folder for index.html (default LAKE/report; ./report for an object-store lake)"
    )
    rp.set_defaults(func=cmd_report)

    sv = sub.add_parser(
        "serve", help="register the Prefect deployments (nightly crawl, inbox watch, weekly snapshot) and serve them"
    )
    sv.add_argument(
        "--config",
        default=None,
        help="midicorpus.toml or a pyproject.toml with [tool.midicorpus] "
        "(default: $MIDICORPUS_CONFIG, ./midicorpus.toml, ./pyproject.toml)",
    )
    sv.add_argument("--once", action="store_true", help="start the runs that are due now, wait for them, exit")
    sv.add_argument(
        "--check", action="store_true", help="validate the config, print the deployments and schedules, exit"
    )
    sv.set_defaults(func=cmd_serve)

    r = sub.add_parser("run", help="the whole pipeline on the embedded default (music21 corpus)")
    r.add_argument("--limit", type=int, default=300, help="music21 works to ingest (default 300)")
    r.add_argument("--train-steps", type=int, default=60, help="steps of the short training run (default 60)")
    r.set_defaults(func=cmd_run)
    return p


def _closed_pipe() -> int:
    """Quiet end on a closed stdout, with the status a shell reports for SIGPIPE (128 + 13)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush must not fail again
    except (OSError, ValueError):
        pass
    return 141


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from corpus.engine import EngineError
    from corpus.lake import LakeError

    try:
        return int(args.func(Ctx(args)) or 0)
    except BrokenPipeError:  # `midicorpus sql ... | head`: the reader has what it wanted
        return _closed_pipe()
    except (UserError, LakeError, EngineError) as exc:
        print(f"midicorpus: error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        print(f"midicorpus: error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        if "interrupted" not in str(exc).lower():  # DuckDB turns Ctrl-C during a query into this
            return _internal_error(exc)
        print("midicorpus: interrupted; committed work is kept, run the command again to finish", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("midicorpus: interrupted; committed work is kept, run the command again to finish", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("MIDICORPUS_DEBUG"):
            raise
        return _internal_error(exc)


def _internal_error(exc: Exception) -> int:
    if os.environ.get("MIDICORPUS_DEBUG"):
        raise exc
    print(
        f"midicorpus: internal error: {type(exc).__name__}: {_one_line(str(exc))} (set MIDICORPUS_DEBUG=1 for the traceback)",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
