"""Flows that chain the stages: ``pipeline`` (crawl / ingest -> curate -> tokenize -> snapshot)
and ``inbox`` (a watched folder of Lakh / LPD / MIDI archives).

The nightly deployment is ``pipeline`` with ``crawl=True``: the Mutopia crawl, then curate and
tokenize. Curate and tokenize only ever do the pieces not done yet, so they process exactly
what the crawl brought (and are ``Cached`` when it brought nothing).

The inbox: every entry directly in the folder (a folder, an archive, a .npz or MIDI file) is
ingested once, then moved to ``done/`` (ingested; rejected files inside are rows of
``rejects`` as usual) or ``failed/`` (the ingest raised: with ``<name>.error.txt`` beside
it). Entries that changed in the last ``settle_s`` seconds (still being copied), hidden
names (``.x``) and partial downloads (``.part``, ``.tmp``, ``.crdownload``) wait for a later
run; so does everything when the lake stays locked past ``lock_wait_s`` (the run fails with
the lock message and nothing is moved). The kind is detected from names only (see
:func:`detect_kind`).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from prefect import flow, task

from corpus.lake import Lake, LakeLocked
from flows.stages import (
    IngestKind,
    _log,
    curate_flow,
    ingest_task,
    snapshot_flow,
    tokenize_flow,
    wait_until_free,
)

LAKH_NAMES = ("lmd_full", "lmd_matched", "lmd_aligned")
_MD5 = re.compile(r"^[0-9a-f]{32}$")
_MSD = re.compile(r"^tr[a-z0-9]{16}$")
PARTIAL_SUFFIXES = (".part", ".partial", ".tmp", ".crdownload", ".download", ".error.txt")
DONE, FAILED = "done", "failed"


# ------------------------------------------------------------------ kind detection
def _peek(path: Path, n: int) -> Iterator[str]:
    """Up to ``n`` relative names of files under a folder or inside an archive (cheap: no full read)."""
    from corpus.sources.files import archive_kind

    if path.is_dir():
        count = 0
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames.sort()
            for f in sorted(filenames):
                yield (Path(dirpath) / f).relative_to(path).as_posix()
                count += 1
                if count >= n:
                    return
        return
    kind = archive_kind(path.name)
    try:
        if kind == "zip":
            with zipfile.ZipFile(path) as zf:
                yield from zf.namelist()[:n]
        elif kind == "tar":
            with tarfile.open(path, mode="r|*") as tf:  # streams: stops after n members
                for k, member in enumerate(tf):
                    if k >= n:
                        return
                    yield member.name
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError):
        return  # a broken archive: ingested as 'dir', where it becomes an archive_corrupt reject


def detect_kind(path: str | os.PathLike[str], peek: int = 200) -> IngestKind:
    """``lakh``, ``lpd`` or ``dir`` for an inbox entry, from names only.

    ``lpd``: a ``.npz`` file, or ``.npz`` files among the first ``peek`` entries. ``lakh``:
    an LMD layout (``lmd_full`` / ``lmd_matched`` / ``lmd_aligned`` in a name, md5-named MIDI
    under a one-hex-digit folder or under an MSD track id) or LMD sidecars
    (``match_scores.json``, ``md5_to_paths.json``). Anything else is a ``dir`` of MIDI files.
    """
    p = Path(path)
    name = p.name.lower()
    if p.is_file() and name.endswith(".npz"):
        return "lpd"
    if p.is_dir() and any((p / s).is_file() for s in ("match_scores.json", "md5_to_paths.json")):
        return "lakh"
    midi_hint = False
    for rel in _peek(p, peek):
        low = rel.lower()
        parts = PurePosixPath(low).parts
        if low.endswith(".npz"):
            return "lpd"
        if any(x.startswith(LAKH_NAMES) for x in parts[:-1]):
            return "lakh"
        stem = PurePosixPath(low).stem
        if low.endswith((".mid", ".midi")) and _MD5.match(stem):
            parent = parts[-2] if len(parts) > 1 else ""
            if re.fullmatch(r"[0-9a-f]", parent) or any(_MSD.match(x) for x in parts[:-1]):
                return "lakh"
        midi_hint = True
    if name.startswith(LAKH_NAMES):
        return "lakh"
    if name.startswith(("lpd_", "lpd-", "lpd.")) and not midi_hint:
        return "lpd"
    return "dir"


# ------------------------------------------------------------------ inbox
def _newest_mtime(p: Path) -> float:
    newest = p.lstat().st_mtime
    if p.is_dir():
        for dirpath, _dirs, files in os.walk(p):
            for f in files:
                try:
                    newest = max(newest, (Path(dirpath) / f).lstat().st_mtime)
                except OSError:
                    continue
    return newest


def scan_inbox(inbox: str | os.PathLike[str], settle_s: float = 0.0) -> tuple[list[dict[str, str]], list[str]]:
    """Entries ready to ingest (name, path, kind, or ``error`` when not ingestible) and those still settling."""
    from corpus.sources.files import archive_kind, is_midi_name

    root = Path(inbox)
    ready: list[dict[str, str]] = []
    waiting: list[str] = []
    now = dt.datetime.now().timestamp()
    for p in sorted(root.iterdir()):
        name = p.name
        if name in (DONE, FAILED) or name.startswith((".", "_")) or name.lower().endswith(PARTIAL_SUFFIXES):
            continue
        try:
            if now - _newest_mtime(p) < settle_s:
                waiting.append(name)
                continue
        except OSError:
            continue  # vanished while we looked
        entry = {"name": name, "path": str(p)}
        if p.is_symlink():
            entry["error"] = "symbolic links are not followed; move the folder or archive itself into the inbox"
        elif p.is_dir() or archive_kind(name) or is_midi_name(name) or name.lower().endswith(".npz"):
            entry["kind"] = detect_kind(p)
        elif name in ("match_scores.json", "md5_to_paths.json"):
            entry["error"] = (
                "a Lakh sidecar on its own: put it in one folder with its archive or files, then drop the folder"
            )
        else:
            entry["error"] = "not a folder, an archive (.zip, .tar, .tar.gz, ...), a MIDI file or an .npz file"
        ready.append(entry)
    return ready, waiting


def move_aside(path: str | os.PathLike[str], inbox: str | os.PathLike[str], to: str, note: str | None = None) -> Path:
    """Move an inbox entry into ``done/`` or ``failed/`` (a timestamp suffix when the name is taken)."""
    src = Path(path)
    dest_dir = Path(inbox) / to
    dest_dir.mkdir(exist_ok=True)
    dest = dest_dir / src.name
    if dest.exists() or dest.is_symlink():
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        dest = dest_dir / f"{src.name}.{stamp}"
    os.replace(src, dest)  # same file system: atomic
    if note is not None:
        (dest_dir / f"{dest.name}.error.txt").write_text(note + "\n")
    return dest


@task(name="scan-inbox")
def scan_inbox_task(inbox: str, settle_s: float) -> dict[str, Any]:
    root = Path(inbox)
    root.mkdir(parents=True, exist_ok=True)
    ready, waiting = scan_inbox(root, settle_s)
    if waiting:
        _log("info", f"still being copied (changed in the last {settle_s:g} s), next run: {', '.join(waiting)}")
    return {"ready": ready, "waiting": waiting}


@flow(name="inbox")
def inbox_flow(
    lake: str = "lake",
    inbox: str = "inbox",
    settle_s: float = 60.0,
    source: str = "inbox",
    license: str | None = None,
    strict: bool = False,
    curate: bool = True,
    schemes: list[str] | None = None,
    transpose: str = "none",
    scheduler: str | None = None,
    workers: int | None = None,
    lock_wait_s: float = 0.0,
) -> dict[str, Any]:
    """Ingest each new entry of the inbox folder once, move it to done/ or failed/, then curate + tokenize."""
    scan = scan_inbox_task(str(inbox), settle_s)
    done: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    for entry in scan["ready"]:
        if "error" in entry:
            move_aside(entry["path"], inbox, FAILED, entry["error"])
            failed.append({"name": entry["name"], "error": entry["error"]})
            _log("warning", f"{entry['name']}: moved to {FAILED}/: {entry['error']}")
            continue
        try:
            summary = ingest_task(
                lake=str(lake),
                kind=entry["kind"],
                path=entry["path"],
                source=source,
                license=license,
                strict=strict,
                scheduler=scheduler,
                workers=workers,
                lock_wait_s=lock_wait_s,
            )
        except LakeLocked:
            raise  # nothing moved: the next run tries again
        except Exception as exc:  # noqa: BLE001 - any failure of one entry: record it, move it aside, go on
            msg = f"{type(exc).__name__}: {exc}"
            move_aside(entry["path"], inbox, FAILED, f"ingest {entry['kind']} failed: {msg}")
            failed.append({"name": entry["name"], "error": msg})
            _log("warning", f"{entry['name']}: moved to {FAILED}/: {msg}")
            continue
        move_aside(entry["path"], inbox, DONE)
        done.append({"name": entry["name"], "kind": entry["kind"], "line": summary["line"], "ok": summary["ok"]})
    out: dict[str, Any] = {"done": done, "failed": failed, "waiting": scan["waiting"]}
    if curate and done:
        out["curate"] = curate_flow(lake=str(lake), scheduler=scheduler, workers=workers, lock_wait_s=lock_wait_s)
        if schemes is None or schemes:
            out["tokenize"] = tokenize_flow(
                lake=str(lake),
                schemes=schemes or ["remi"],
                transpose=transpose,
                scheduler=scheduler,
                workers=workers,
                lock_wait_s=lock_wait_s,
            )
    if failed and not done:
        _log("warning", f"{len(failed)} inbox entries failed, none ingested")
    return out


# ------------------------------------------------------------------ pipeline
@flow(name="pipeline")
def pipeline_flow(
    lake: str = "lake",
    crawl: bool = False,
    inputs: list[dict[str, str]] | None = None,
    curate: bool = True,
    schemes: list[str] | None = None,
    transpose: str = "none",
    snapshot: dict[str, Any] | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    lock_wait_s: float = 0.0,
    crawl_options: dict[str, Any] | None = None,
    use_cache: bool = True,
) -> dict[str, Any]:
    """Crawl Mutopia and/or ingest ``inputs``, then curate, tokenize (``schemes``, default remi) and snapshot.

    ``inputs``: ``[{"kind": "dir"|"lakh"|"lpd", "path": ..., "source": ..., "license": ...}]``.
    ``snapshot``: the keyword arguments of :func:`flows.stages.snapshot_flow` (``name``, ``scheme``, ...),
    or None for no snapshot. ``schemes=[]`` skips tokenize. ``crawl_options``: keyword arguments
    of :func:`flows.crawl.crawl_mutopia_flow` (``base_url``, ``max_pieces``, ``delay``...).
    """
    from flows.stages import ingest_flow

    out: dict[str, Any] = {}
    engine = {"scheduler": scheduler, "workers": workers}
    if crawl:
        from flows.crawl import crawl_mutopia_flow

        # The crawl task takes the lake lock itself (and fails at once when it is held):
        # wait here until the lake is free, so a scheduled crawl waits like the other stages.
        wait_until_free(Lake(lake), "crawl mutopia (waiting)", lock_wait_s)
        opts = dict(crawl_options or {})
        opts.setdefault("workers", workers)
        out["crawl"] = crawl_mutopia_flow(lake=str(lake), **opts)
    for item in inputs or []:
        unknown = set(item) - {"kind", "path", "source", "license", "strict"}
        if unknown or "path" not in item:
            raise ValueError(f"pipeline inputs are {{kind, path, source, license, strict}} with a path, got {item!r}")
        out.setdefault("ingest", []).append(
            ingest_flow(
                lake=str(lake),
                kind=item.get("kind", "dir"),
                path=item["path"],
                source=item.get("source", "dir"),
                license=item.get("license"),
                strict=bool(item.get("strict", False)),
                lock_wait_s=lock_wait_s,
                **engine,
            )
        )
    if curate:
        out["curate"] = curate_flow(lake=str(lake), lock_wait_s=lock_wait_s, use_cache=use_cache, **engine)
    if curate and (schemes is None or schemes):
        out["tokenize"] = tokenize_flow(
            lake=str(lake),
            schemes=schemes or ["remi"],
            transpose=transpose,
            lock_wait_s=lock_wait_s,
            use_cache=use_cache,
            **engine,
        )
    if snapshot:
        out["snapshot"] = snapshot_flow(lake=str(lake), lock_wait_s=lock_wait_s, use_cache=use_cache, **snapshot)
    return out
