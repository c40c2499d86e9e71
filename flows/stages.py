"""One Prefect flow per stage (ingest, curate, tokenize, snapshot), thin wrappers over ``corpus``.

The crawl flow lives in :mod:`flows.crawl`; :mod:`flows.pipeline` chains them all.

Each flow runs one task that takes the lake's writer lock, starts the engine, calls the
``corpus`` function and returns its summary as a dict (which the Prefect UI shows).

- **Lake lock.** Every task takes the lock through :func:`locked`: when another writer holds
  it (another flow run, or a ``midicorpus`` command in a shell), the task waits up to
  ``lock_wait_s`` seconds, polling, then fails the run with the lake's own one-line message
  (``lake '...' is locked by pid N (curate); wait for it to finish (waited 600 s)``).
  ``lock_wait_s=0`` (the default when a flow is called directly) fails at once, like the CLI.
  Nothing is retried on a locked lake: the next scheduled run does the work.
- **Retries** only where a later attempt can succeed: a Dask scheduler that cannot be reached
  or a connection dropped mid-run (:func:`retry_on_network`). Bad input and defects in the
  data fail at once; they are not transient.
- **Caching.** Curate, tokenize and snapshot are functions of the lake's input tables; their
  cache key is the list of committed files of those tables (plus the options that change
  the output), so a run on an unchanged lake returns the previous summary at once
  (state ``Cached``) instead of starting a cluster and re-clustering everything.
  ``use_cache=False`` forces a run. Ingest is not cached: the lake already skips what it has.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger, task

from corpus.curate import has_neardup_index
from corpus.lake import Lake, LakeLocked, lake_location

IngestKind = Literal["dir", "lakh", "lpd"]
LOCK_POLL_S = 5.0
NETWORK_RETRIES = 2
NETWORK_RETRY_DELAY_S = 60.0


# ------------------------------------------------------------------ shared helpers
@contextlib.contextmanager
def locked(lake: Lake, command: str, wait_s: float = 0.0, poll_s: float | None = None) -> Iterator[Lake]:
    """Hold the lake's writer lock, waiting up to ``wait_s`` seconds for another writer.

    Raises :class:`corpus.lake.LakeLocked` (the lake's message, plus how long it waited).
    """
    deadline = time.monotonic() + max(wait_s, 0.0)
    poll = LOCK_POLL_S if poll_s is None else poll_s
    logged = False
    with contextlib.ExitStack() as stack:
        while True:
            try:
                stack.enter_context(lake.lock(command))
                break
            except LakeLocked as exc:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise LakeLocked(f"{exc} (waited {wait_s:g} s)" if wait_s > 0 else str(exc)) from None
                if not logged:
                    _log("info", f"{exc}; waiting up to {wait_s:g} s")
                    logged = True
                time.sleep(min(poll, left))
        yield lake


def wait_until_free(lake: Lake, command: str, wait_s: float = 0.0, poll_s: float | None = None) -> None:
    """Wait until nobody holds the lake lock (for steps that take the lock themselves)."""
    with locked(lake, command, wait_s, poll_s):
        pass


def _log(level: str, msg: str) -> None:
    try:
        logger = get_run_logger()
    except Exception:  # noqa: BLE001 - outside a run (a plain function call): nowhere to log
        return
    getattr(logger, level)(msg)


def retry_on_network(task: Any, task_run: Any, state: Any) -> bool:
    """Retry condition: the Dask scheduler was unreachable or a connection dropped."""
    from corpus.engine import EngineError

    exc = state.result(raise_on_failure=False)
    if isinstance(exc, EngineError | ConnectionError | TimeoutError):
        return True
    return any(t.__name__ == "CommClosedError" for t in type(exc).__mro__)


def lake_fingerprint(lake: Lake, tables: tuple[str, ...]) -> str:
    """A hash of the lake versions that last wrote ``tables`` (changes whenever one of them is written)."""
    versions = lake.table_versions() if lake.exists() else {}
    h = hashlib.sha256(lake.location.encode())
    for t in tables:
        h.update(f"\0{t}={versions.get(t)}".encode())
    return h.hexdigest()


def _stage_key(stage: str, lake: str, tables: tuple[str, ...], options: dict[str, Any]) -> str:
    from corpus import __version__

    lk = Lake(lake)
    payload = {"stage": stage, "version": __version__, "lake": lake_fingerprint(lk, tables), "options": options}
    return (
        f"midicorpus-{stage}-"
        + hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:32]
    )


def _snapshot_present(lake: str, out: dict[str, Any]) -> bool:
    """A cached snapshot result still stands only while its manifest (the commit point) exists."""
    lk = Lake(lake)
    if lk.remote:
        return lk.file_exists(f"snapshots/{out['name']}/{out['version']}/manifest.json")
    return (Path(out["path"]) / "manifest.json").is_file()


def _file_hash(path: str | None) -> str | None:
    if not path or not Path(path).is_file():
        return None
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


CURATE_INPUTS = ("pieces", "piece_facts", "tracks")
TOKENIZE_INPUTS = ("pieces", "piece_facts", "tracks", "piece_analysis", "track_texture", "dedup")
SNAPSHOT_INPUTS = (
    "pieces",
    "piece_facts",
    "piece_analysis",
    "track_texture",
    "dedup",
    "song_groups",
    "tokens",
    "tokenizers",
)


def _curate_key(context: Any, p: dict[str, Any]) -> str:
    from corpus.curate import CURATE_VERSION, DEDUP_THRESHOLD
    from corpus.curation import songs

    opts = {
        "key_backend": p.get("key_backend"),
        "melodies": p.get("extract_melodies"),
        "v": CURATE_VERSION,
        "threshold": DEDUP_THRESHOLD,
        "songs": [songs.SONG_RULE, songs.TRACK_CONFIG_SHA256, songs.DEFAULT_THRESHOLD],
    }
    return _stage_key("curate", lake_location(p["lake"]), CURATE_INPUTS, opts)


def _tokenize_key(context: Any, p: dict[str, Any]) -> str:
    opts = {k: p.get(k) for k in ("schemes", "transpose", "min_key_confidence")}
    opts["config"] = _file_hash(p.get("config_file"))
    return _stage_key("tokenize", lake_location(p["lake"]), TOKENIZE_INPUTS, opts)


def _snapshot_key(context: Any, p: dict[str, Any]) -> str:
    opts = {k: p.get(k) for k in ("name", "scheme", "where", "transpose", "split", "seed", "max_seq_len")}
    return _stage_key("snapshot", lake_location(p["lake"]), SNAPSHOT_INPUTS, opts)


def _run(task_fn: Any, still_there: Callable[[dict[str, Any]], bool] | None = None, **params: Any) -> dict[str, Any]:
    """Call a task inside a flow; its summary dict, with ``cached: True`` on a cache hit.

    ``still_there(result)`` checks that what a cached run made still exists (a removed
    snapshot or index); when it does not, the task runs again.
    """
    state = task_fn(return_state=True, **params)
    out = dict(state.result())  # raises the task's exception when it failed
    out["cached"] = state.name == "Cached"
    if out["cached"] and still_there is not None and not still_there(out):
        _log("info", "the cached run's output is gone: running again")
        state = task_fn.with_options(refresh_cache=True)(return_state=True, **params)
        out = {**state.result(), "cached": False}
    if out["cached"]:
        _log("info", "lake inputs unchanged since the last run: reused its result (use_cache=False forces a run)")
    return out


# ------------------------------------------------------------------ ingest
def make_source(kind: IngestKind, path: str, source: str = "dir", license: str | None = None) -> Any:
    """The ``corpus.sources`` object for an ingest kind (raises ValueError / FileNotFoundError)."""
    from corpus.sources.files import check_root, is_midi_name

    if kind == "dir":
        from corpus.sources.folder import DirSource

        check_root(path, is_midi_name)
        return DirSource(path, name=source, license=license)
    if kind == "lakh":
        from corpus.sources.lakh import LakhSource

        check_root(path, is_midi_name)
        return LakhSource(path)
    if kind == "lpd":
        from corpus.sources.lpd import LpdSource

        check_root(path, lambda n: n.lower().endswith(".npz"))
        return LpdSource(path)
    raise ValueError(f"ingest kind must be 'dir', 'lakh' or 'lpd', got {kind!r}")


@task(
    name="ingest",
    task_run_name="ingest {kind} {path}",
    retry_condition_fn=retry_on_network,
    retries=NETWORK_RETRIES,
    retry_delay_seconds=NETWORK_RETRY_DELAY_S,
)
def ingest_task(
    lake: str,
    kind: IngestKind,
    path: str,
    source: str = "dir",
    license: str | None = None,
    strict: bool = False,
    scheduler: str | None = None,
    workers: int | None = None,
    timeout_s: float = 20.0,
    lock_wait_s: float = 0.0,
) -> dict[str, Any]:
    """Ingest one folder or archive (``corpus.ingest``), holding the lake lock."""
    from corpus.engine import Engine
    from corpus.ingest import IngestConfig, ingest

    src = make_source(kind, path, source, license)  # bad input fails before the lock and the cluster
    label = source if kind == "dir" else kind
    lk = Lake(lake)
    cfg = IngestConfig(policy="strict" if strict else "lenient", timeout_s=timeout_s)
    with locked(lk, f"ingest {label} (prefect)", lock_wait_s), Engine(scheduler, workers) as engine:
        if kind == "lpd":
            src.engine = engine  # piano rolls convert in the workers
        summary = ingest(lk, src, engine, cfg, command=f"ingest {label}")
    _log("info", f"ingest {label} {path}: {summary.line()}")
    return {**summary.as_dict(), "line": summary.line(), "kind": kind, "path": str(path)}


@flow(name="ingest", flow_run_name="ingest {kind} {path}")
def ingest_flow(
    lake: str = "lake",
    kind: IngestKind = "dir",
    path: str = ".",
    source: str = "dir",
    license: str | None = None,
    strict: bool = False,
    scheduler: str | None = None,
    workers: int | None = None,
    timeout_s: float = 20.0,
    lock_wait_s: float = 0.0,
) -> dict[str, Any]:
    """Ingest a folder or archive: plain MIDI (``dir``), the Lakh MIDI Dataset or the Lakh Pianoroll Dataset."""
    return _run(
        ingest_task,
        lake=str(lake),
        kind=kind,
        path=str(path),
        source=source,
        license=license,
        strict=strict,
        scheduler=scheduler,
        workers=workers,
        timeout_s=timeout_s,
        lock_wait_s=lock_wait_s,
    )


# ------------------------------------------------------------------ curate
@task(
    name="curate",
    cache_key_fn=_curate_key,
    retry_condition_fn=retry_on_network,
    retries=NETWORK_RETRIES,
    retry_delay_seconds=NETWORK_RETRY_DELAY_S,
)
def curate_task(
    lake: str,
    key_backend: str = "ours",
    extract_melodies: bool = False,
    scheduler: str | None = None,
    workers: int | None = None,
    lock_wait_s: float = 0.0,
) -> dict[str, Any]:
    """Texture, key and duplicate clusters for the pieces not yet curated (``corpus.curate``)."""
    from corpus.curate import curate
    from corpus.engine import Engine

    lk = Lake(lake)
    with locked(lk, "curate (prefect)", lock_wait_s), Engine(scheduler, workers) as engine:
        s = curate(lk, engine, key_backend=key_backend, extract_melodies=extract_melodies)
    _log("info", f"curate: {s.line()}")
    return {
        "analysed": s.analysed,
        "failed": s.failed,
        "pieces": s.pieces,
        "clusters": s.clusters,
        "duplicate_pairs": s.duplicate_pairs,
        "melodies": s.melodies,
        "seconds": round(s.seconds, 3),
        "line": s.line(),
    }


@flow(name="curate")
def curate_flow(
    lake: str = "lake",
    key_backend: Literal["ours", "music21"] = "ours",
    extract_melodies: bool = False,
    scheduler: str | None = None,
    workers: int | None = None,
    lock_wait_s: float = 0.0,
    use_cache: bool = True,
) -> dict[str, Any]:
    """Curate what is new in the lake: texture, key, duplicate clusters."""
    runner = curate_task.with_options(refresh_cache=not use_cache)
    return _run(
        runner,
        lambda out: has_neardup_index(Lake(lake)) or not out["pieces"],
        lake=str(lake),
        key_backend=key_backend,
        extract_melodies=extract_melodies,
        scheduler=scheduler,
        workers=workers,
        lock_wait_s=lock_wait_s,
    )


# ------------------------------------------------------------------ tokenize
@task(
    name="tokenize",
    task_run_name="tokenize {schemes}",
    cache_key_fn=_tokenize_key,
    retry_condition_fn=retry_on_network,
    retries=NETWORK_RETRIES,
    retry_delay_seconds=NETWORK_RETRY_DELAY_S,
)
def tokenize_task(
    lake: str,
    schemes: list[str],
    transpose: str = "none",
    config_file: str | None = None,
    min_key_confidence: float | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    lock_wait_s: float = 0.0,
) -> dict[str, Any]:
    """Tokenize the curated pieces under each scheme (``corpus.tokenize.stage``)."""
    from corpus.engine import Engine
    from corpus.tokenize.stage import DEFAULT_MIN_KEY_CONFIDENCE, tokenize

    lk = Lake(lake)
    conf = DEFAULT_MIN_KEY_CONFIDENCE if min_key_confidence is None else min_key_confidence
    with locked(lk, "tokenize (prefect)", lock_wait_s), Engine(scheduler, workers) as engine:
        s = tokenize(lk, engine, list(schemes), transpose, config_file, conf)
    for line in s.lines():
        _log("info", f"tokenize {line}")
    return {
        "schemes": {
            x.scheme: {
                "tokenizer_hash": x.tokenizer_hash,
                "pieces": x.pieces,
                "tokens": x.tokens,
                "rejected": x.rejected,
                "reasons": dict(x.reasons),
                "already": x.skipped_existing,
            }
            for x in s.schemes
        },
        "seconds": round(s.seconds, 3),
        "lines": s.lines(),
    }


@flow(name="tokenize")
def tokenize_flow(
    lake: str = "lake",
    schemes: list[str] | None = None,
    transpose: str = "none",
    config_file: str | None = None,
    min_key_confidence: float | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    lock_wait_s: float = 0.0,
    use_cache: bool = True,
) -> dict[str, Any]:
    """Tokenize curated pieces under one or more schemes (default ``["remi"]``)."""
    runner = tokenize_task.with_options(refresh_cache=not use_cache)
    return _run(
        runner,
        lake=str(lake),
        schemes=list(schemes or ["remi"]),
        transpose=transpose,
        config_file=config_file,
        min_key_confidence=min_key_confidence,
        scheduler=scheduler,
        workers=workers,
        lock_wait_s=lock_wait_s,
    )


# ------------------------------------------------------------------ snapshot
@task(name="snapshot", task_run_name="snapshot {name} ({scheme})", cache_key_fn=_snapshot_key)
def snapshot_task(
    lake: str,
    name: str,
    scheme: str,
    where: str | None = None,
    transpose: str = "none",
    split: list[float] | None = None,
    seed: int = 0,
    max_seq_len: int | None = None,
    lock_wait_s: float = 0.0,
) -> dict[str, Any]:
    """Build a content-versioned snapshot (``corpus.snapshot.create``)."""
    from corpus.snapshot import DEFAULT_SPLIT, SnapshotSpec, create

    spec = SnapshotSpec(
        name=name,
        scheme=scheme,
        where=where,
        transpose=transpose,
        split=tuple(split) if split else DEFAULT_SPLIT,
        seed=seed,
        max_seq_len=max_seq_len,
    )  # type: ignore[arg-type]
    spec.validate()
    lk = Lake(lake)
    with locked(lk, f"snapshot {name} (prefect)", lock_wait_s):
        r = create(lk, spec)
    _log("info", r.line())
    return {
        "name": r.name,
        "version": r.version,
        "path": str(r.path),
        "created": r.created,
        "counts": r.manifest.get("counts", {}),
        "line": r.line(),
    }


@task(name="maintain")
def maintain_task(lake: str, keep_days: float = 7.0, lock_wait_s: float = 0.0) -> dict[str, Any]:
    """``lake maintain``: compact small files, expire old versions (not those snapshots use)."""
    from corpus.snapshot import maintain_lake, maintain_line

    t0 = time.perf_counter()
    lk = Lake(lake)
    with locked(lk, "lake maintain (prefect)", lock_wait_s):
        res = maintain_lake(lk, keep_days)
    line = maintain_line(res, time.perf_counter() - t0)
    _log("info", line)
    return {**res, "line": line}


@flow(name="maintain", flow_run_name="maintain {lake}")
def maintain_flow(lake: str = "lake", keep_days: float = 7.0, lock_wait_s: float = 0.0) -> dict[str, Any]:
    """Keep a lake of many nightly runs small and fast: its file count and versions stay bounded."""
    return maintain_task(lake=str(lake), keep_days=keep_days, lock_wait_s=lock_wait_s)


@flow(name="snapshot", flow_run_name="snapshot {name}")
def snapshot_flow(
    lake: str = "lake",
    name: str = "weekly",
    scheme: str = "remi",
    where: str | None = None,
    transpose: str = "none",
    split: list[float] | None = None,
    seed: int = 0,
    max_seq_len: int | None = None,
    lock_wait_s: float = 0.0,
    use_cache: bool = True,
) -> dict[str, Any]:
    """Snapshot the tokenized selection: same lake and spec give the same version and bytes."""
    runner = snapshot_task.with_options(refresh_cache=not use_cache)
    return _run(
        runner,
        lambda out: _snapshot_present(lake, out),
        lake=str(lake),
        name=name,
        scheme=scheme,
        where=where,
        transpose=transpose,
        split=list(split) if split else None,
        seed=seed,
        max_seq_len=max_seq_len,
        lock_wait_s=lock_wait_s,
    )
