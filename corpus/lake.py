"""The lake: a content-addressed raw store, transactional Parquet tables, DuckDB views.

Layout under the root (see DESIGN.md):

- ``raw/<sha[:2]>/<sha>.mid``: original bytes, written once (temp file + rename).
- ``tables/<table>/<key>=<value>/part-<txid>.parquet``: hive-partitioned Parquet.
- ``_log/<txid>.json``: one commit record per transaction, listing its files.
- ``_staging/<txid>/``: files of a transaction not yet committed.
- ``catalog.duckdb``: DuckDB views over the tables, for the DuckDB shell and notebooks.

A transaction writes its files to staging, then writes its commit record (temp file +
rename: the commit point), then moves the files into place. Readers through
:meth:`Lake.connect` see exactly the committed files. A crash before the commit point leaves
only staging, removed by the next writer; a crash after it is rolled forward by the next
writer. So a kill -9 at any moment never shows a partial write, and re-running the command
finishes the work.

The root may also be an object-store URL (``s3://bucket/lake``, any fsspec protocol; see
:mod:`corpus.objectstore`). There is no rename on an object store, so a transaction writes its
Parquet files straight to their final keys (invisible: readers only read files a commit record
lists) after an intent marker ``_staging/<txid>.json``; the commit record is one PUT that
refuses to overwrite (the commit point); the next writer deletes the files of markers that
never committed. The writer lock is an object created with ``If-None-Match: *`` and renewed
as a lease (:class:`corpus.objectstore.LeaseLock`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from corpus import objectstore
from schemas import PARTITIONS, PIECE_EXTRAS, TABLES, VIEWS_SQL

DEFAULT_LAKE = "./lake"


class LakeError(Exception):
    """A problem with the lake a user can act on (locked, unwritable, not a lake)."""


class LakeLocked(LakeError):
    pass


# a write the user can fix: free space, permissions, a read-only mount
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


def _cause(exc: BaseException) -> str:
    """``No space left on device (ENOSPC)``, also from DuckDB's errors, which carry no errno."""
    if isinstance(exc, OSError) and exc.errno in errno.errorcode:
        return f"{os.strerror(exc.errno)} ({errno.errorcode[exc.errno]})"
    text = " ".join(str(exc).split())
    for code in sorted(_WRITE_ERRNOS):
        if os.strerror(code) in text:
            return f"{os.strerror(code)} ({errno.errorcode[code]})"
    return text


def _write_error(exc: OSError, root: Path, what: str, outcome: str) -> LakeError | OSError:
    """A failed write as one line naming the lake, the cause and what it left; other errors as they are."""
    if exc.errno not in _WRITE_ERRNOS:
        return exc
    return LakeError(f"cannot write to the lake {str(root)!r} while {what}: {_cause(exc)}; {outcome}")


_NOT_COMMITTED = "work since the last commit is dropped, committed work is kept; run the command again once it is fixed"


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, tmp_dir: Path | None = None) -> None:
    """Write ``data`` to ``path`` so that a reader sees all of it or nothing.

    ``tmp_dir`` (same file system) holds the temp file instead of ``path``'s folder; the lake
    passes its staging folder, which the next writer empties, so a kill leaves no stray file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if tmp_dir is not None:
        tmp_dir.mkdir(parents=True, exist_ok=True)
    tmp = (tmp_dir or path.parent) / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)  # no partial temp file left behind (a full disk stays as full as it was)
        raise
    _fsync_dir(path.parent)


def lake_location(root: str | os.PathLike[str], base: str | os.PathLike[str] | None = None) -> str:
    """The canonical name of a lake root: an object-store URL as given, a path made absolute
    (relative to ``base`` when given)."""
    if objectstore.is_url(root):
        return str(root).rstrip("/")
    path = Path(os.path.expanduser(str(root)))
    return str((Path(base) / path if base is not None else path).absolute())


def new_txid() -> str:
    """Time-ordered, unique transaction id."""
    return f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Lake:
    """One lake root, a local folder or an object-store URL. Cheap to construct; writers take
    :meth:`lock` first."""

    def __init__(self, root: str | os.PathLike[str] = DEFAULT_LAKE) -> None:
        self._lock_fh: Any = None
        self._lease: Any = None
        self._records: dict[str, dict[str, Any]] = {}  # commit records read so far (immutable)
        self._raw_pending: dict[str, bytes] = {}
        self.fs: Any = None
        if objectstore.is_url(root):
            self.location = str(root).rstrip("/")
            self.protocol = self.location.split("://", 1)[0]
            try:
                self.fs, self._base = objectstore.open_fs(self.location)
            except objectstore.ObjectStoreError as exc:
                raise LakeError(str(exc)) from None
            self._root: Path | None = None
        else:
            self._root = Path(root).absolute()
            self.location = str(self._root)

    def __repr__(self) -> str:
        return f"Lake({self.location!r})"

    # ---------------------------------------------------------------- paths
    @property
    def remote(self) -> bool:
        """True for an object-store lake."""
        return self.fs is not None

    @property
    def root(self) -> Path:
        """The local folder; an object-store lake has none (use the file methods below)."""
        if self._root is None:
            raise LakeError(f"this command needs a lake on a local file system; {self.location!r} is an object store")
        return self._root

    @property
    def raw_dir(self) -> Path:
        return self.root / "raw"

    @property
    def tables_dir(self) -> Path:
        return self.root / "tables"

    @property
    def log_dir(self) -> Path:
        return self.root / "_log"

    @property
    def staging_dir(self) -> Path:
        return self.root / "_staging"

    @property
    def catalog_path(self) -> Path:
        return self.root / "catalog.duckdb"

    def _key(self, rel: str) -> str:
        return f"{self._base}/{rel}"

    def uri(self, rel: str) -> str:
        """A lake-relative path as DuckDB, fsspec or a person would name it."""
        return f"{self.location}/{rel}" if self.remote else str(self.root / rel)

    @contextlib.contextmanager
    def _io(self, what: str, outcome: str = _NOT_COMMITTED) -> Iterator[None]:
        """Object-store failures (network, credentials, permissions) as one-line LakeErrors."""
        if not self.remote:
            yield
            return
        try:
            yield
        except (LakeError, FileNotFoundError, FileExistsError):
            raise
        except Exception as exc:  # noqa: BLE001 - every client, network and auth error of the store
            raise LakeError(
                f"object store {self.location!r} failed while {what}: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}; {outcome}"
            ) from None

    def exists(self) -> bool:
        if self.remote:
            with self._io("looking for the lake", "nothing was changed"):
                return bool(self.fs.exists(self._key("_lake.json")))
        return self.log_dir.is_dir()

    # ---------------------------------------------------------------- files (both kinds of root)
    def read_bytes(self, rel: str) -> bytes:
        """A file of the lake; FileNotFoundError when absent."""
        if self.remote:
            with self._io(f"reading {rel}", "nothing was changed"):
                return bytes(self.fs.cat_file(self._key(rel)))
        return (self.root / rel).read_bytes()

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write a whole file so that readers see all of it or the previous version."""
        if self.remote:
            with self._io(f"writing {rel}"):
                self.fs.pipe_file(self._key(rel), data)
            return
        try:
            atomic_write_bytes(self.root / rel, data)
        except OSError as exc:
            raise _write_error(exc, self.root, f"writing {rel}", _NOT_COMMITTED) from None

    def file_exists(self, rel: str) -> bool:
        if self.remote:
            with self._io(f"looking for {rel}", "nothing was changed"):
                return bool(self.fs.isfile(self._key(rel)))
        return (self.root / rel).is_file()

    def list_files(self, rel: str) -> list[str]:
        """Lake-relative paths of every file under ``rel``, sorted (none when it is absent)."""
        if self.remote:
            with self._io(f"listing {rel}", "nothing was changed"):
                try:
                    found = self.fs.find(self._key(rel), detail=True)
                except FileNotFoundError:
                    return []
            n = len(self._base) + 1
            return sorted(str(f)[n:] for f, info in found.items() if info.get("type") == "file")
        base = self.root / rel
        if not base.is_dir():
            return [rel] if base.is_file() else []
        return sorted(str(p.relative_to(self.root)) for p in base.rglob("*") if p.is_file())

    def remove(self, rel: str) -> None:
        """Delete a file or everything under a folder; nothing when absent."""
        if self.remote:
            with self._io(f"deleting {rel}"):
                files = [self._key(f) for f in self.list_files(rel)]
                if files:
                    self.fs.rm(files)
            return
        path = self.root / rel
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def upload_dir(self, local: Path, rel: str) -> list[str]:
        """Object store only: copy every file under the local folder ``local`` to ``rel``; return
        their lake paths. Callers write a marker (a manifest, a pointer) after it: the commit point.
        (A local lake builds beside the target and renames it into place instead.)"""
        if not self.remote:
            raise RuntimeError("upload_dir is for object-store lakes; a local lake renames into place")
        files = sorted(p for p in Path(local).rglob("*") if p.is_file())
        rels = [f"{rel}/{p.relative_to(local).as_posix()}" for p in files]
        with self._io(f"uploading {rel}"):
            for p, r in zip(files, rels, strict=True):
                self.fs.put_file(str(p), self._key(r))
        return rels

    def download(self, rel: str, local: Path) -> Path:
        """Object store only: copy a file or folder of the lake to the local path ``local``."""
        if not self.remote:
            raise RuntimeError("download is for object-store lakes; a local lake's files are read in place")
        local = Path(local)
        rels = self.list_files(rel)
        if not rels:
            raise FileNotFoundError(f"{self.uri(rel)} not found")
        with self._io(f"downloading {rel}", "nothing was changed"):
            for r in rels:
                dst = local if r == rel else local / r[len(rel) + 1 :]
                dst.parent.mkdir(parents=True, exist_ok=True)
                self.fs.get_file(self._key(r), str(dst))
        return local

    # ---------------------------------------------------------------- lock
    @contextlib.contextmanager
    def lock(self, command: str = "") -> Iterator[Lake]:
        """Hold the lake's writer lock; a second writer gets :class:`LakeLocked` at once."""
        if self.remote:
            with self._remote_lock(command):
                yield self
            return
        self.create()
        path = self.root / ".lock"
        fh = open(path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise LakeLocked(f"lake {str(self.root)!r} is locked by {holder}; wait for it to finish") from None
        self._lock_fh = fh
        try:
            try:  # unbuffered, so a failed write leaves nothing pending in ``fh``
                os.ftruncate(fh.fileno(), 0)
                os.write(fh.fileno(), f"pid {os.getpid()} ({command or 'midicorpus'})".encode())
            except OSError as exc:
                raise _write_error(exc, self.root, "taking the lock", "nothing was written") from None
            self.recover()
            yield self
        finally:
            self._lock_fh = None
            shutil.rmtree(self.staging_dir / "tmp", ignore_errors=True)  # temp files of raw writes
            with contextlib.suppress(OSError):
                os.ftruncate(fh.fileno(), 0)
            fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()

    @contextlib.contextmanager
    def _remote_lock(self, command: str) -> Iterator[None]:
        self.create()
        lease = objectstore.LeaseLock(self.fs, self._key(".lock"), f"pid {os.getpid()} ({command or 'midicorpus'})")
        with self._io("taking the lock", "nothing was written"):
            holder = lease.acquire()
        if holder is not None:
            left = max(0, int(float(holder.get("expires", 0)) - time.time()))
            raise LakeLocked(
                f"lake {self.location!r} is locked by {holder.get('holder', 'another process')} on "
                f"{holder.get('host', 'another host')} (lease ends in {left} s unless renewed); wait for it to finish"
            )
        self._lease = lease
        try:
            self.recover()
            yield
            self._flush_raw()
        finally:
            self._lease = None
            self._raw_pending.clear()
            lease.release()

    def _holding_lock(self) -> bool:
        return self._lock_fh is not None or self._lease is not None

    def create(self) -> None:
        if self.remote:
            bucket = self._base.split("/", 1)[0]
            with self._io("creating the lake", "nothing was written"):
                if self.protocol in {"s3", "s3a"}:
                    try:
                        self.fs.info(bucket)  # unlike exists(), tells a missing bucket from an unreachable store
                    except FileNotFoundError:
                        raise LakeError(
                            f"cannot create the lake at {self.location!r}: bucket {bucket!r} does not exist"
                        ) from None
                if not self.fs.exists(self._key("_lake.json")):
                    with contextlib.suppress(FileExistsError):
                        self.fs.pipe_file(self._key("_lake.json"), json.dumps({"format": 1}).encode(), mode="create")
            return
        try:
            for d in (self.raw_dir, self.tables_dir, self.log_dir, self.staging_dir):
                d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LakeError(f"cannot create the lake at {str(self.root)!r}: {exc.strerror or exc}") from None
        if not os.access(self.root, os.W_OK):
            raise LakeError(f"lake {str(self.root)!r} is not writable")

    def recover(self) -> None:
        """Finish committed transactions and drop uncommitted ones (after a crash)."""
        if self.remote:
            self._recover_remote()
            return
        if not self.staging_dir.is_dir():
            return
        for stage in sorted(self.staging_dir.iterdir()):
            record = self.log_dir / f"{stage.name}.json"
            if record.exists():
                try:
                    self._move_into_place(stage, json.loads(record.read_text()))
                except OSError as exc:
                    raise _write_error(
                        exc,
                        self.root,
                        f"finishing the interrupted commit {stage.name}",
                        "it stays readable from _staging and the next command finishes it",
                    ) from None
            shutil.rmtree(stage, ignore_errors=True)

    def _recover_remote(self) -> None:
        markers = [m for m in self.list_files("_staging") if m.endswith(".json")]
        if not markers:
            return
        committed = {Path(m).stem for m in self.list_files("_log")}
        orphans: list[str] = []
        tables = None
        for m in markers:
            txid = Path(m).stem
            if txid not in committed:
                if tables is None:
                    tables = self.list_files("tables")
                orphans += [t for t in tables if Path(t).name.startswith(f"part-{txid}-")]
        with self._io("dropping an interrupted transaction", "the next command drops it"):
            if orphans:
                self.fs.rm([self._key(o) for o in orphans])
            self.fs.rm([self._key(m) for m in markers])

    # ---------------------------------------------------------------- raw store
    def raw_path(self, sha: str) -> Path:
        return self.raw_dir / sha[:2] / f"{sha}.mid"

    def _raw_rel(self, sha: str) -> str:
        return f"raw/{sha[:2]}/{sha}.mid"

    def put_raw(self, data: bytes, sha: str | None = None) -> str:
        """Store bytes once under their sha256; return the sha. Never modifies a stored file.

        On an object store the uploads are batched and run concurrently; every pending one is
        stored before the next commit record, so no committed row names a missing file.
        """
        sha = sha or hashlib.sha256(data).hexdigest()
        if self.remote:
            self._raw_pending[sha] = data
            if len(self._raw_pending) >= 64 or sum(map(len, self._raw_pending.values())) >= 32 << 20:
                self._flush_raw()
            return sha
        path = self.raw_path(sha)
        if not path.exists():
            try:
                atomic_write_bytes(path, data, self.staging_dir / "tmp")
            except OSError as exc:
                raise _write_error(exc, self.root, "storing a raw file", _NOT_COMMITTED) from None
        return sha

    def _flush_raw(self) -> None:
        if not self._raw_pending:
            return
        with self._io("storing raw files"):
            self.fs.pipe({self._key(self._raw_rel(s)): d for s, d in self._raw_pending.items()})
        self._raw_pending.clear()

    def has_raw(self, sha: str) -> bool:
        if self.remote:
            return sha in self._raw_pending or self.file_exists(self._raw_rel(sha))
        return self.raw_path(sha).exists()

    def get_raw(self, sha: str) -> bytes:
        if self.remote:
            if sha in self._raw_pending:
                return self._raw_pending[sha]
            return self.read_bytes(self._raw_rel(sha))
        return self.raw_path(sha).read_bytes()

    def get_raws(self, shas: Sequence[str]) -> list[bytes]:
        """Several raw files at once (concurrent requests on an object store)."""
        if not self.remote:
            return [self.get_raw(s) for s in shas]
        keys = {s: self._key(self._raw_rel(s)) for s in shas if s not in self._raw_pending}
        with self._io("reading raw files", "nothing was changed"):
            got = self.fs.cat(list(keys.values()), on_error="raise") if keys else {}  # a list: always a dict
        by_key = {str(k).split("://", 1)[-1]: v for k, v in got.items()}
        return [self._raw_pending[s] if s in self._raw_pending else bytes(by_key[keys[s]]) for s in shas]

    # ---------------------------------------------------------------- transactions
    @contextlib.contextmanager
    def transaction(self, meta: Mapping[str, Any] | None = None) -> Iterator[Transaction]:
        if not self._holding_lock():
            raise RuntimeError("write to the lake inside Lake.lock()")
        tx = Transaction(self, dict(meta or {}))
        try:
            yield tx
        except BaseException:
            tx.abort()
            raise
        tx.commit()

    def _move_into_place(self, stage: Path, record: Mapping[str, Any]) -> None:
        for files in record["files"].values():
            for rel in files:
                src, dst = stage / rel, self.root / rel
                if src.exists():
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(src, dst)

    def commits(self) -> list[dict[str, Any]]:
        """Every committed transaction's record, oldest first."""
        if self.remote:
            names = [n for n in self.list_files("_log") if n.endswith(".json")]
            missing = [n for n in names if Path(n).stem not in self._records]
            if missing:
                with self._io("reading commit records", "nothing was changed"):
                    got = self.fs.cat([self._key(n) for n in missing], on_error="raise")
                for k, v in got.items():
                    self._records[Path(str(k)).stem] = json.loads(v)
            return [self._records[Path(n).stem] for n in names]
        if not self.log_dir.is_dir():
            return []
        out = []
        for p in sorted(self.log_dir.glob("*.json")):
            out.append(json.loads(p.read_text()))
        return out

    def table_files(self) -> dict[str, list[str]]:
        """Committed files per table, as absolute paths (URLs on an object store), in commit order.

        A transaction interrupted after its commit point (killed, or its move failed) still
        has files in ``_staging/<txid>/`` until the next writer moves them: they are read there.
        """
        files: dict[str, list[str]] = {}
        if self.remote:
            for rec in self.commits():
                for table, rels in rec["files"].items():
                    files.setdefault(table, []).extend(self.uri(r) for r in rels)
            return files
        staged = {p.name for p in self.staging_dir.iterdir()} if self.staging_dir.is_dir() else set()
        for rec in self.commits():
            for table, rels in rec["files"].items():
                paths = []
                for r in rels:
                    path = self.root / r
                    if rec["txid"] in staged and not path.exists() and (self.staging_dir / rec["txid"] / r).exists():
                        path = self.staging_dir / rec["txid"] / r
                    paths.append(str(path))
                files.setdefault(table, []).extend(paths)
        return files

    # ---------------------------------------------------------------- reading
    def connect(self, *, database: str = ":memory:") -> Any:
        """A DuckDB connection with one view per table over the committed files."""
        import duckdb

        con = duckdb.connect(database)
        con.execute("SET threads TO 2")
        if self.remote:
            self._duck_attach(con)
        _create_views(con, self.table_files())
        return con

    def _duck_attach(self, con: Any) -> str:
        try:
            return objectstore.duckdb_attach(con, self.fs, self.protocol)
        except objectstore.ObjectStoreError as exc:
            raise LakeError(str(exc)) from None

    def query(self, sql: str, params: Sequence[Any] | None = None) -> pa.Table:
        con = self.connect()
        try:
            return con.sql(sql, params=params).to_arrow_table() if params else con.sql(sql).to_arrow_table()
        finally:
            con.close()

    def write_catalog(self) -> None:
        """(Re)write ``catalog.duckdb`` with views over the tables' globs, atomically.

        On an object store it is built locally and uploaded; opening it needs DuckDB's httpfs
        and an S3 secret (see the README), since it holds no credentials.
        """
        import duckdb

        if self.remote:
            with tempfile.TemporaryDirectory(prefix="midicorpus-catalog-") as tmpdir:
                path = Path(tmpdir) / "catalog.duckdb"
                con = duckdb.connect(str(path))
                try:
                    self._duck_attach(con)
                    present = self.table_files()
                    _create_views(con, {t: [self.uri(f"tables/{t}/**/*.parquet")] for t in TABLES if present.get(t)})
                finally:
                    con.close()
                with self._io(
                    "writing catalog.duckdb", "the tables are committed, the next command rewrites the catalog"
                ):
                    self.fs.put_file(str(path), self._key("catalog.duckdb"))
            return
        tmp = self.root / f".catalog.{uuid.uuid4().hex[:8]}.duckdb"
        try:
            con = duckdb.connect(str(tmp))
            try:
                globs = {}
                for table in TABLES:
                    d = self.tables_dir / table
                    if any(d.rglob("*.parquet")) if d.is_dir() else False:
                        globs[table] = [str(d / "**" / "*.parquet")]
                _create_views(con, globs)
            finally:
                con.close()
            os.replace(tmp, self.catalog_path)
        except (OSError, duckdb.IOException, duckdb.TransactionException) as exc:  # a full disk, a read-only lake
            for p in (tmp, Path(f"{tmp}.wal")):
                with contextlib.suppress(OSError):
                    os.remove(p)
            if isinstance(exc, OSError) and exc.errno not in _WRITE_ERRNOS:
                raise
            raise LakeError(
                f"cannot write to the lake {str(self.root)!r} while writing catalog.duckdb: {_cause(exc)}; "
                "the tables are committed, the next command rewrites the catalog"
            ) from None
        with contextlib.suppress(FileNotFoundError):
            os.remove(str(tmp) + ".wal")


class Transaction:
    """Files written together and committed at once (see the module docstring)."""

    def __init__(self, lake: Lake, meta: dict[str, Any]) -> None:
        self.lake = lake
        self.txid = new_txid()
        self.meta = meta
        self.stage = lake.staging_dir / self.txid if not lake.remote else None
        self.files: dict[str, list[str]] = {}
        self.rows: dict[str, int] = {}
        self._marked = False

    def write(
        self, table: str, data: pa.Table | list[dict[str, Any]], partition: Mapping[str, str] | None = None
    ) -> None:
        """Stage rows of ``table`` for this transaction, in one partition."""
        if table not in TABLES:
            raise KeyError(f"unknown table {table!r}")
        keys = PARTITIONS[table]
        partition = dict(partition or {})
        if set(partition) != set(keys):
            raise ValueError(f"table {table!r} is partitioned by {keys}, got {sorted(partition)}")
        if isinstance(data, list):
            if not data:
                return
            data = rows_to_table(table, data)
        if data.num_rows == 0:
            return
        sub = "/".join(f"{k}={_part_value(partition[k])}" for k in keys)
        n = len(self.files.get(table, []))
        rel = f"tables/{table}/{sub + '/' if sub else ''}part-{self.txid}-{n:04d}.parquet"
        if self.lake.remote:
            lake = self.lake
            buf = pa.BufferOutputStream()
            pq.write_table(data, buf, compression="zstd")
            with lake._io(f"writing {table} rows"):
                if not self._marked:  # the intent marker first: a crash leaves files the next writer finds
                    lake.fs.pipe_file(lake._key(f"_staging/{self.txid}.json"), b"{}")
                    self._marked = True
                lake.fs.pipe_file(lake._key(rel), buf.getvalue().to_pybytes())
        else:
            assert self.stage is not None
            dst = self.stage / rel
            try:
                dst.parent.mkdir(parents=True, exist_ok=True)
                pq.write_table(data, dst, compression="zstd")
            except OSError as exc:  # the caller's ``with lake.transaction()`` drops the stage
                raise _write_error(exc, self.lake.root, f"staging {table} rows", _NOT_COMMITTED) from None
        self.files.setdefault(table, []).append(rel)
        self.rows[table] = self.rows.get(table, 0) + data.num_rows

    def abort(self) -> None:
        """Drop what this transaction wrote (best effort: the next writer finishes the job)."""
        if self.stage is not None:
            shutil.rmtree(self.stage, ignore_errors=True)
            return
        with contextlib.suppress(Exception):
            keys = [self.lake._key(r) for rels in self.files.values() for r in rels]
            if keys:
                self.lake.fs.rm(keys)
            if self._marked:
                self.lake.fs.rm_file(self.lake._key(f"_staging/{self.txid}.json"))

    def _record(self) -> dict[str, Any]:
        return {
            "txid": self.txid,
            "committed_at": now_utc().isoformat(),
            "files": self.files,
            "rows": self.rows,
            "meta": self.meta,
        }

    def commit(self) -> None:
        if self.lake.remote:
            self._commit_remote()
            return
        assert self.stage is not None
        if not self.files:
            shutil.rmtree(self.stage, ignore_errors=True)
            return
        record = self._record()
        try:
            for files in self.files.values():
                for rel in files:
                    with open(self.stage / rel, "rb") as fh:
                        os.fsync(fh.fileno())
            atomic_write_bytes(self.lake.log_dir / f"{self.txid}.json", json.dumps(record, sort_keys=True).encode())
        except OSError as exc:
            shutil.rmtree(self.stage, ignore_errors=True)
            raise _write_error(exc, self.lake.root, "writing the commit record", _NOT_COMMITTED) from None
        try:
            self.lake._move_into_place(self.stage, record)
        except OSError as exc:  # after the commit point: committed, readable from staging, finished by the next writer
            raise _write_error(
                exc,
                self.lake.root,
                "moving committed files into place",
                "the transaction is committed and readable; the next command finishes the move",
            ) from None
        shutil.rmtree(self.stage, ignore_errors=True)

    def _commit_remote(self) -> None:
        lake = self.lake
        if not self.files:
            return
        lease = lake._lease
        if lease is not None and lease.lost:
            self.abort()
            raise LakeError(
                f"lost the lock of {lake.location!r} (its lease expired and another writer took it); {_NOT_COMMITTED}"
            )
        try:
            lake._flush_raw()
        except LakeError:
            self.abort()
            raise
        record = self._record()
        with lake._io("writing the commit record"):
            lake.fs.pipe_file(
                lake._key(f"_log/{self.txid}.json"), json.dumps(record, sort_keys=True).encode(), mode="create"
            )
        lake._records[self.txid] = json.loads(json.dumps(record, sort_keys=True))
        with contextlib.suppress(Exception):  # a stale marker of a committed tx is only removed by recover()
            lake.fs.rm_file(lake._key(f"_staging/{self.txid}.json"))


def _part_value(value: str) -> str:
    value = str(value)
    if not value or "/" in value or "=" in value or value in {".", ".."}:
        raise ValueError(f"partition value {value!r} must be non-empty without '/' or '='")
    return value


def rows_to_table(table: str, rows: list[dict[str, Any]]) -> pa.Table:
    """Rows to Arrow with the table's schema; extra keys become extra columns (inferred types)."""
    schema = TABLES[table]
    partition_keys = set(PARTITIONS[table])
    known = set(schema.names)
    extra: list[str] = []
    for row in rows:
        for k in row:
            if k not in known and k not in partition_keys and k not in extra:
                extra.append(k)
    cols = {name: [row.get(name) for row in rows] for name in schema.names}
    arrays = [pa.array(cols[f.name], type=f.type) for f in schema]
    fields = list(schema)
    for k in sorted(extra):
        declared = PIECE_EXTRAS.get(k) if table == "pieces" else None
        arr = pa.array([row.get(k) for row in rows], type=declared)
        if pa.types.is_null(arr.type):
            arr = arr.cast(pa.string())
        arrays.append(arr)
        fields.append(pa.field(k, arr.type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


_DUCK_TYPES = {
    pa.string(): "VARCHAR",
    pa.int64(): "BIGINT",
    pa.int32(): "INTEGER",
    pa.float64(): "DOUBLE",
    pa.float32(): "FLOAT",
    pa.bool_(): "BOOLEAN",
}


def _duck_type(t: pa.DataType) -> str:
    if t in _DUCK_TYPES:
        return _DUCK_TYPES[t]
    if pa.types.is_timestamp(t):
        return "TIMESTAMPTZ" if t.tz else "TIMESTAMP"
    if pa.types.is_list(t):
        return _duck_type(t.value_type) + "[]"
    raise TypeError(f"no DuckDB type for {t}")


def _table_sql(table: str, files: list[str] | None) -> str:
    """SQL for one table: its committed files, with every declared column present even when
    no file has it yet (an empty typed SELECT joined BY NAME)."""
    keys = PARTITIONS[table]
    fields = list(TABLES[table]) + ([pa.field(k, t) for k, t in PIECE_EXTRAS.items()] if table == "pieces" else [])
    cols = [f"CAST(NULL AS {_duck_type(f.type)}) AS {f.name}" for f in fields]
    cols += [f"CAST(NULL AS VARCHAR) AS {k}" for k in keys]
    empty = f"SELECT {', '.join(cols)} WHERE false"
    if not files:
        return f"({empty})"
    flist = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
    hive = ", hive_partitioning = true, hive_types_autocast = false" if keys else ", hive_partitioning = false"
    return f"(SELECT * FROM read_parquet([{flist}], union_by_name = true{hive}) UNION ALL BY NAME {empty})"


def _create_views(con: Any, files: Mapping[str, list[str]]) -> None:
    subs = {t: _table_sql(t, files.get(t)) for t in TABLES}
    sql = VIEWS_SQL.read_text()
    for t, s in subs.items():
        sql = sql.replace("{" + t + "}", s)
    con.execute(sql)
