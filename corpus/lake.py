"""The lake: a content-addressed raw store and the tables in DuckLake, with DuckDB views.

Layout under a local root (see DESIGN.md):

- ``raw/<sha[:2]>/<sha>.mid``: original bytes, written once (temp file + rename).
- ``catalog.sqlite``: the DuckLake catalog (SQLite): tables, their schemas, every snapshot.
- ``data/store/<table>/...``: the DuckLake data files (Parquet), hive-partitioned where a table
  is (``pieces`` by source, ``rejects`` by stage, ``tokens`` by scheme and tokenizer).
- ``snapshots/<name>/<version>/``: immutable dataset snapshots (:mod:`corpus.snapshot`).

DuckLake (DuckDB's lakehouse format) gives what the hand-written layer before it had to build:
multi-table ACID transactions (a :class:`Transaction` is one DuckLake transaction; a kill at
any moment leaves the last committed snapshot, nothing half-written), snapshots with time travel
(:meth:`Lake.connect` ``at=``), schema evolution (columns added by later versions or by sources),
compaction and expiry (:meth:`Lake.maintain`). The catalog stores file paths relative to the
data path, and the data path as ``data/``; every connection of ours passes the data path it sees
now, so a copied or moved lake opens, and a plain DuckDB shell started in the lake folder opens
it with ``ATTACH 'ducklake:sqlite:catalog.sqlite' AS lake; USE lake;``.

Tables live in the catalog's ``store`` schema; the views users query (``schemas/views.sql``)
live in its ``main`` schema, so ``USE lake`` shows exactly the contract's views.

The root may also be an object-store URL (``s3://bucket/lake``, see :mod:`corpus.objectstore`):
the raw store and the data files are objects there, and the catalog is a database every user of
the lake reaches, PostgreSQL (``--catalog postgres://user@host:port/db`` or
``MIDICORPUS_CATALOG`` when the lake is created; ``_lake.json`` in the lake remembers it, without
credentials, which come from the URL given again or libpq's ``PG*`` variables). One writer at a
time holds the lake's lock (a file lock locally, a lease object on an object store).
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

from corpus import objectstore
from schemas import PARTITIONS, PIECE_EXTRAS, SCHEMA_VERSION, TABLES, VIEWS_SQL

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

    def __init__(self, root: str | os.PathLike[str] = DEFAULT_LAKE, catalog: str | None = None) -> None:
        self._lock_fh: Any = None
        self._lease: Any = None
        self._writer: Any = None  # the DuckDB connection of the lock holder, attached read-write
        self._writer_spill: str | None = None  # its temp_directory (a folder of its own)
        self._raw_pending: dict[str, bytes] = {}
        self._catalog_arg = catalog or os.environ.get("MIDICORPUS_CATALOG") or None
        self._catalog_cache: str | None = None
        self._catalog_file = "catalog.sqlite"
        self._upgrading = False  # lake upgrade: writes the new catalog beside the old layout
        self._remote_catalog_made = False
        self._writer_views = False  # the views are made in the writer's database (for its cursors)
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
    def staging_dir(self) -> Path:
        """Temp files of raw writes (emptied when the lock is released)."""
        return self.root / "_staging"

    @property
    def catalog_path(self) -> Path:
        """The SQLite catalog of a local lake."""
        return self.root / self._catalog_file

    @property
    def data_path(self) -> str:
        """Where DuckLake keeps the data files, as DuckDB names it (ends with ``/``)."""
        return f"{self.location}/data/" if self.remote else f"{self.root}/data/"

    def _old_layout(self) -> bool:
        """A lake written by the hand-written table layer (``_log/`` commit records), not yet upgraded."""
        if self.remote:
            try:
                info = json.loads(self.read_bytes("_lake.json"))
            except FileNotFoundError:
                return bool(self.list_files("_log")[:1])
            return int(info.get("format", 1)) < 2
        return (self.root / "_log").is_dir() and not (self.root / "catalog.sqlite").exists()

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
        """True when there is a lake here (also one in the old layout, which needs ``lake upgrade``)."""
        if self.remote:
            with self._io("looking for the lake", "nothing was changed"):
                if self.fs.exists(self._key("_lake.json")):
                    return True
            return self._old_layout()
        # a catalog, an old layout, or a lake created (raw store and staging folder) but not yet written
        return (
            self.catalog_path.is_file() or self._old_layout() or (self.raw_dir.is_dir() and self.staging_dir.is_dir())
        )

    def _check_layout(self) -> None:
        if not self._upgrading and self._old_layout():
            raise LakeError(
                f"lake {self.location!r} is in the layout of midicorpus before DuckLake (tables/ + _log/); "
                "run 'midicorpus lake upgrade' once to move its tables into DuckLake"
            )

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
            self._open_writer()
            yield self
        finally:
            self._close_writer()
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
            self._open_writer()
            yield
            self._flush_raw()
        finally:
            self._close_writer()
            self._lease = None
            self._raw_pending.clear()
            lease.release()

    def _holding_lock(self) -> bool:
        return self._lock_fh is not None or self._lease is not None

    def create(self) -> None:
        """Make the folders (or check the bucket) and remember the catalog; the tables are made
        by the first writer (:meth:`_open_writer`)."""
        self._check_layout()
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
                    catalog = self._catalog_arg
                    if not catalog:
                        raise LakeError(
                            f"a lake on an object store needs a catalog database that all its users reach: "
                            f"give --catalog postgres://USER@HOST:PORT/DB (or MIDICORPUS_CATALOG) to create {self.location!r}"
                        )
                    body = {"format": 2, "catalog": catalog_public(catalog)}
                    with contextlib.suppress(FileExistsError):
                        self.fs.pipe_file(self._key("_lake.json"), json.dumps(body).encode(), mode="create")
            return
        try:
            for d in (self.raw_dir, self.staging_dir):
                d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LakeError(f"cannot create the lake at {str(self.root)!r}: {exc.strerror or exc}") from None
        if not os.access(self.root, os.W_OK):
            raise LakeError(f"lake {str(self.root)!r} is not writable")

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

    # ---------------------------------------------------------------- catalog
    @property
    def catalog(self) -> str:
        """The DuckLake catalog as ``sqlite:PATH`` or a ``postgres://`` URL."""
        if not self.remote:
            return f"sqlite:{self.catalog_path}"
        if self._catalog_cache is None:
            if self._catalog_arg:
                self._catalog_cache = self._catalog_arg
            else:
                try:
                    info = json.loads(self.read_bytes("_lake.json"))
                except FileNotFoundError:
                    raise LakeError(f"no lake at {self.location!r}") from None
                if not info.get("catalog"):
                    raise LakeError(f"lake {self.location!r} names no catalog; give --catalog (MIDICORPUS_CATALOG)")
                self._catalog_cache = str(info["catalog"])
        return self._catalog_cache

    def _catalog_exists(self) -> bool:
        """Whether the catalog has been made (a lake no writer has written yet has none)."""
        if not self.remote:
            return self.catalog_path.is_file()
        if not self._remote_catalog_made:
            import duckdb

            con = duckdb.connect()
            try:
                self._attach(con, read_only=True)
                self._remote_catalog_made = True
            except LakeError as exc:
                if "creating a new DuckLake is explicitly disabled" not in str(exc):
                    raise
            finally:
                con.close()
        return self._remote_catalog_made

    def _attach(self, con: Any, *, read_only: bool, at: int | None = None) -> None:
        """ATTACH the DuckLake catalog as ``lake`` on ``con`` (with this lake's data path)."""
        import duckdb

        catalog = self.catalog
        load_extensions(con, "postgres_scanner" if catalog.startswith("postgres") else "sqlite_scanner")
        if self.remote:
            self._duck_attach(con)
        opts = [f"DATA_PATH {_q(self.data_path)}", "OVERRIDE_DATA_PATH true"]
        if read_only:
            opts.append("READ_ONLY")
        if at is not None:
            opts.append(f"SNAPSHOT_VERSION {int(at)}")
        attach = f"ATTACH {_q('ducklake:' + ducklake_catalog(catalog))} AS lake ({', '.join(opts)})"
        try:
            try:
                con.execute(attach)
            except duckdb.Error as exc:
                # a writer killed inside a commit leaves SQLite a hot journal, which a read-only
                # connection may not roll back: roll it back (a plain read does) and attach again
                if not (read_only and "readonly database" in str(exc) and self._recover_sqlite_journal()):
                    raise
                con.execute(attach)
        except duckdb.Error as exc:
            what = f"version {at} of the lake" if at is not None else "the lake's catalog"
            raise LakeError(f"cannot open {what} {self.location!r}: {_cause(exc)}") from None

    def _recover_sqlite_journal(self) -> bool:
        """Roll back the hot journal a killed writer left in a local SQLite catalog; False when there
        is none or it cannot be (a read-only lake: the reader's error stands)."""
        import sqlite3

        path = self.catalog_path
        if self.remote or not self.catalog.startswith("sqlite:") or not Path(f"{path}-journal").exists():
            return False
        try:
            with contextlib.closing(sqlite3.connect(path, timeout=30)) as db:
                db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.Error:
            return False
        return True

    def _open_writer(self) -> None:
        """The lock holder's connection: the catalog attached read-write, its tables and views
        brought up to this version's schemas (one transaction; nothing when they are current)."""
        import duckdb

        self._check_layout()
        if not self.remote and not self.catalog_path.exists():
            # a new catalog stores its data path relative ('data/'): the lake can move
            con = duckdb.connect()
            try:
                load_extensions(con, "sqlite_scanner")
                con.execute(f"ATTACH {_q('ducklake:sqlite:' + str(self.catalog_path))} AS fresh (DATA_PATH 'data/')")
            except duckdb.Error as exc:
                raise LakeError(f"cannot create the catalog of {self.location!r}: {_cause(exc)}") from None
            finally:
                con.close()
        con = duckdb.connect()
        con.execute(f"SET threads TO {WRITER_THREADS}")
        con.execute("SET enable_progress_bar = false")  # our own progress lines, not DuckDB's on stderr
        # where the lock holder's queries spill (matching, maintain): its own folder, removed at close
        self._writer_spill = tempfile.mkdtemp(prefix="midicorpus-spill-")
        con.execute(f"SET temp_directory = {_q(self._writer_spill)}")
        try:
            self._attach(con, read_only=False)
            self._writer = con
            self._ensure_schema()
        except BaseException:
            self._writer = None
            con.close()
            shutil.rmtree(self._writer_spill, ignore_errors=True)
            self._writer_spill = None
            raise

    def _close_writer(self) -> None:
        con, self._writer = self._writer, None
        self._writer_views = False
        if con is not None:
            with contextlib.suppress(Exception):
                con.execute("ROLLBACK")
            con.close()
        spill, self._writer_spill = self._writer_spill, None
        if spill:
            shutil.rmtree(spill, ignore_errors=True)

    def _columns(self, con: Any) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for t, c in con.execute(
            "SELECT table_name, column_name FROM duckdb_columns() WHERE database_name = 'lake' AND schema_name = 'store'"
        ).fetchall():
            out.setdefault(t, set()).add(c)
        return out

    def _ensure_schema(self) -> None:
        con = self._writer
        have = self._columns(con)
        stmts: list[str] = []
        if not con.execute(
            "SELECT 1 FROM duckdb_schemas() WHERE database_name = 'lake' AND schema_name = 'store'"
        ).fetchone():
            stmts.append("CREATE SCHEMA lake.store")
            stmts.append("CALL ducklake_set_option('lake', 'data_inlining_row_limit', 0)")
        for table in TABLES:
            fields = declared_fields(table)
            if table not in have:
                cols = ", ".join(f'"{f.name}" {_duck_type(f.type)}' for f in fields)
                stmts.append(f'CREATE TABLE lake.store."{table}" ({cols})')
                if PARTITIONS[table]:
                    stmts.append(
                        f'ALTER TABLE lake.store."{table}" SET PARTITIONED BY ({", ".join(PARTITIONS[table])})'
                    )
            else:
                for f in fields:
                    if f.name not in have[table]:
                        stmts.append(f'ALTER TABLE lake.store."{table}" ADD COLUMN "{f.name}" {_duck_type(f.type)}')
        stamp = views_stamp()
        row = None
        if con.execute(
            "SELECT 1 FROM duckdb_views() WHERE database_name = 'lake' AND view_name = 'midicorpus_schema'"
        ).fetchone():
            row = con.execute("SELECT views_sha256 FROM lake.main.midicorpus_schema").fetchone()
        views = not row or row[0] != stamp
        if not stmts and not views:
            return
        try:
            con.execute("BEGIN")
            for sql in stmts:
                con.execute(sql)
            if views:
                con.execute("USE lake.main")
                con.execute(views_sql("store"))
                con.execute(
                    f"CREATE OR REPLACE VIEW midicorpus_schema AS SELECT {SCHEMA_VERSION} AS schema_version, "
                    f"{_q(stamp)} AS views_sha256"
                )
                con.execute("USE memory")
            con.execute(
                "CALL ducklake_set_commit_message('lake', 'midicorpus', 'schema', extra_info => ?)",
                [json.dumps({"schema": SCHEMA_VERSION, "views": stamp})],
            )
            con.execute("COMMIT")
        except Exception as exc:  # noqa: BLE001 - DuckDB's and the catalog's errors; others pass through _cause/_failed
            with contextlib.suppress(Exception):
                con.execute("ROLLBACK")
            raise LakeError(
                f"cannot write the tables of {self.location!r}: {_cause(exc)}; nothing was changed"
            ) from None

    # ---------------------------------------------------------------- transactions
    @contextlib.contextmanager
    def transaction(self, meta: Mapping[str, Any] | None = None) -> Iterator[Transaction]:
        """One DuckLake transaction: every table written inside it commits at once, or none does."""
        if not self._holding_lock():
            raise RuntimeError("write to the lake inside Lake.lock()")
        tx = Transaction(self, dict(meta or {}))
        try:
            yield tx
        except BaseException:
            tx.abort()
            raise
        tx.commit()

    def commits(self) -> list[dict[str, Any]]:
        """Every data transaction committed, oldest first: its DuckLake snapshot id, time, rows per table."""
        if not self._catalog_exists():
            return []
        con = self._reader()
        try:
            rows = con.execute(
                "SELECT snapshot_id, snapshot_time, commit_extra_info FROM ducklake_snapshots('lake') "
                "WHERE author = 'midicorpus' AND commit_message = 'data' ORDER BY snapshot_id"
            ).fetchall()
        finally:
            con.close()
        out = []
        for sid, when, extra in rows:
            info = json.loads(extra or "{}")
            out.append(
                {
                    "snapshot_id": int(sid),
                    "txid": info.get("txid"),
                    "committed_at": when.isoformat(),
                    "tables": info.get("tables", {}),
                    "meta": info.get("meta", {}),
                }
            )
        return out

    def current_version(self) -> int | None:
        """The id of the lake's newest DuckLake snapshot (None before the first write)."""
        if not self._catalog_exists():
            return None
        con = self._reader()
        try:
            return int(con.execute("SELECT id FROM ducklake_current_snapshot('lake')").fetchone()[0])
        finally:
            con.close()

    def table_versions(self) -> dict[str, int]:
        """Per table, the snapshot id of the last transaction that wrote it (absent: never written)."""
        out: dict[str, int] = {}
        for rec in self.commits():
            for t in rec["tables"]:
                out[t] = rec["snapshot_id"]
        return out

    # ---------------------------------------------------------------- reading
    def _reader(self, at: int | None = None) -> Any:
        import duckdb

        self._check_layout()
        con = duckdb.connect()
        con.execute(f"SET threads TO {WRITER_THREADS}")
        con.execute("SET enable_progress_bar = false")  # our own progress lines, not DuckDB's on stderr
        try:
            self._attach(con, read_only=True, at=at)
        except BaseException:
            con.close()
            raise
        return con

    def connect(self, *, database: str = ":memory:", at: int | None = None) -> Any:
        """A DuckDB connection with the lake attached read-only as ``lake`` and one view per table
        of ``schemas/views.sql`` over it, at the newest snapshot or at snapshot ``at``."""
        import duckdb

        self._check_layout()
        if not self._catalog_exists():
            if at is not None:
                raise LakeError(f"no lake at {self.location!r}, so no version {at} of it")
            con = duckdb.connect(database)
            _create_empty_views(con)
            return con
        if database == ":memory:" and at is None and self._writer is not None:
            # the lock holder reads through a cursor of its own connection: the extensions and the
            # catalog are loaded once; a cursor has its own transaction, so it sees committed rows only
            con = self._writer.cursor()
            if not self._writer_views:
                con.execute(views_sql("lake.store"))
                self._writer_views = True
            return con
        if database == ":memory:":
            con = self._reader(at)
        else:
            self._check_layout()
            con = duckdb.connect(database)
            self._attach(con, read_only=True, at=at)
        con.execute(views_sql("lake.store", _present_columns(con) if at is not None else None))
        return con

    def _duck_attach(self, con: Any) -> str:
        """Let ``con`` read and write the lake's ``s3://`` data files. DuckLake does that through
        DuckDB's httpfs only (its data path must be a file system DuckDB knows), so the fsspec
        fallback of :func:`corpus.objectstore.duckdb_attach` is refused here."""
        if os.environ.get("MIDICORPUS_DUCKDB_S3") == "fsspec" and self.protocol in {"s3", "s3a"}:
            raise LakeError(
                "the tables of an object-store lake are DuckLake, which reads s3:// only through DuckDB's httpfs "
                "extension: unset MIDICORPUS_DUCKDB_S3=fsspec (pip install duckdb-extension-httpfs)"
            )
        try:
            how = objectstore.duckdb_attach(con, self.fs, self.protocol)
        except objectstore.ObjectStoreError as exc:
            raise LakeError(str(exc)) from None
        if how != "httpfs" and self.protocol in {"s3", "s3a"}:
            raise LakeError(
                "DuckDB's httpfs extension cannot be loaded, and the lake's DuckLake tables on s3:// need it: "
                "pip install duckdb-extension-httpfs matching your duckdb"
            )
        return how

    def query(self, sql: str, params: Sequence[Any] | None = None, at: int | None = None) -> pa.Table:
        con = self.connect(at=at)
        try:
            return con.sql(sql, params=params).to_arrow_table() if params else con.sql(sql).to_arrow_table()
        finally:
            con.close()

    def shell_sql(self) -> str:
        """The statements that open this lake's views in any DuckDB 1.5.5 (the DuckDB shell, a
        notebook): the extensions from their pip packages, the catalog read-only as ``lake``."""
        import duckdb

        self._check_layout()
        if not self._catalog_exists():
            raise LakeError(f"no lake at {self.location!r}; create one with midicorpus ingest ...")
        version = duckdb.__version__.split("-")[0]
        catalog = self.catalog
        names = ["ducklake", "postgres_scanner" if catalog.startswith("postgres") else "sqlite_scanner"]
        if self.remote:
            names.append("httpfs")
        loads = []
        for n in names:
            f = _extension_file(n, version)
            loads.append(f"LOAD {_q(f)};" if f else f"INSTALL {n}; LOAD {n};")
        attach = (
            f"ATTACH {_q('ducklake:' + ducklake_catalog(catalog))} AS lake "
            f"(READ_ONLY, DATA_PATH {_q(self.data_path)}, OVERRIDE_DATA_PATH true);"
        )
        return "\n".join([*loads, attach, "USE lake;"])

    # ---------------------------------------------------------------- maintenance
    def maintain(self, *, keep_days: float = 7.0, keep_versions: Sequence[int] = ()) -> dict[str, int]:
        """Compact small files, expire snapshots older than ``keep_days`` (except the newest and
        ``keep_versions``, the ones dataset snapshots were built from) and delete files no
        snapshot reads. Lock held by the caller. Returns counts before and after."""
        if self._writer is None:
            raise RuntimeError("maintain the lake inside Lake.lock()")
        con = self._writer

        def files() -> int:
            return int(con.execute("SELECT count(*) FROM __ducklake_metadata_lake.ducklake_data_file").fetchone()[0])

        def snaps() -> int:
            return int(con.execute("SELECT count(*) FROM ducklake_snapshots('lake')").fetchone()[0])

        before_files, before_snaps = files(), snaps()
        newest = int(con.execute("SELECT id FROM ducklake_current_snapshot('lake')").fetchone()[0])
        keep = {int(v) for v in keep_versions} | {newest}
        cutoff = now_utc() - dt.timedelta(days=keep_days)
        old = [
            int(r[0])
            for r in con.execute(
                "SELECT snapshot_id FROM ducklake_snapshots('lake') WHERE snapshot_time < ? ORDER BY snapshot_id",
                [cutoff],
            ).fetchall()
            if int(r[0]) not in keep
        ]
        tables = [
            str(r[0])
            for r in con.execute(
                "SELECT table_name FROM duckdb_tables() WHERE database_name = 'lake' AND schema_name = 'store' "
                "ORDER BY table_name"
            ).fetchall()
        ]
        row_group = con.execute(
            "SELECT value FROM ducklake_options('lake') WHERE option_name = 'parquet_row_group_size' AND scope = 'GLOBAL'"
        ).fetchone()
        try:
            # the rewrite of large token files spills to disk past this (the writer's temp_directory);
            # one thread: each thread holds row groups of its own in flight, outside that limit
            con.execute(f"SET memory_limit = '{MAINTAIN_MEMORY_LIMIT}'")
            con.execute("SET preserve_insertion_order = false")
            con.execute(f"SET threads = {MAINTAIN_THREADS}")
            # the Parquet writer holds a whole row group outside that limit: 122,880 rows of
            # piece_analysis were 1.3 GB; smaller row groups while compacting (restored after)
            con.execute(f"CALL ducklake_set_option('lake', 'parquet_row_group_size', {MAINTAIN_ROW_GROUP_ROWS})")
            # table by table, and each table's merges MAINTAIN_BATCH_MERGES (new files) per call, each
            # call one commit: memory bounded by a batch, not by the lake
            for table in tables:
                con.execute("CALL ducklake_rewrite_data_files('lake', ?, schema => 'store')", [table])
                left = files()
                while con.execute(
                    "CALL ducklake_merge_adjacent_files('lake', ?, schema => 'store', max_compacted_files => ?)",
                    [table, MAINTAIN_BATCH_MERGES],
                ).fetchall():
                    if files() >= left:  # a call that merged nothing more: done
                        break
                    left = files()
            expired = len(old)
            # the versions the batches committed, but the last, hold the same rows as it: expire them too
            last = int(con.execute("SELECT id FROM ducklake_current_snapshot('lake')").fetchone()[0])
            old += [
                int(r[0])
                for r in con.execute(
                    "SELECT snapshot_id FROM ducklake_snapshots('lake') WHERE snapshot_id > ? AND snapshot_id < ?",
                    [newest, last],
                ).fetchall()
            ]
            if old:
                con.execute(f"CALL ducklake_expire_snapshots('lake', versions => [{', '.join(map(str, old))}])")
            con.execute("CALL ducklake_cleanup_old_files('lake', cleanup_all => true)")
            con.execute("CALL ducklake_delete_orphaned_files('lake', cleanup_all => true)")
        except Exception as exc:  # noqa: BLE001 - DuckDB's and the catalog's errors; others pass through _cause/_failed
            raise LakeError(f"maintenance of {self.location!r} failed: {_cause(exc)}; the lake is as it was") from None
        finally:
            for setting in ("memory_limit", "preserve_insertion_order"):
                with contextlib.suppress(Exception):
                    con.execute(f"RESET {setting}")
            with contextlib.suppress(Exception):
                con.execute(f"SET threads = {WRITER_THREADS}")
            with contextlib.suppress(Exception):
                con.execute(
                    "CALL ducklake_set_option('lake', 'parquet_row_group_size', ?)",
                    [int(row_group[0]) if row_group else DUCKDB_ROW_GROUP_ROWS],
                )
        return {
            "files_before": before_files,
            "files_after": files(),
            "snapshots_before": before_snaps,
            "snapshots_after": snaps(),
            "expired": expired,
        }


MAINTAIN_MEMORY_LIMIT = os.environ.get("MIDICORPUS_MAINTAIN_MEMORY", "1GB")  # DuckDB's, during lake maintain
WRITER_THREADS = 2  # DuckDB threads of the lock holder's connection
MAINTAIN_THREADS = 1  # DuckDB threads during lake maintain
# rows per Parquet row group of the files lake maintain writes (DuckDB's default: 122,880)
MAINTAIN_ROW_GROUP_ROWS = int(os.environ.get("MIDICORPUS_MAINTAIN_ROW_GROUP", "16384"))
DUCKDB_ROW_GROUP_ROWS = 122_880
# merged files written per call and table (DuckLake's max_compacted_files)
MAINTAIN_BATCH_MERGES = int(os.environ.get("MIDICORPUS_MAINTAIN_BATCH", "4"))


class Transaction:
    """Rows of several tables written together and committed at once: one DuckLake transaction
    on the lock holder's connection. Rows go to Parquet files as they are written (memory stays
    bounded by one write); the catalog records them only at :meth:`commit`."""

    def __init__(self, lake: Lake, meta: dict[str, Any]) -> None:
        self.lake = lake
        self.txid = new_txid()
        self.meta = meta
        self.rows: dict[str, int] = {}
        self._begun = False

    def _con(self) -> Any:
        con = self.lake._writer
        if con is None:
            raise RuntimeError("write to the lake inside Lake.lock()")
        if not self._begun:
            con.execute("BEGIN")
            self._begun = True
        return con

    def write(
        self, table: str, data: pa.Table | list[dict[str, Any]], partition: Mapping[str, str] | None = None
    ) -> None:
        """Add rows of ``table`` to this transaction, all in one partition."""
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
        for k in keys:
            data = data.append_column(k, pa.array([_part_value(partition[k])] * data.num_rows, pa.string()))
        con = self._con()
        try:
            have = {
                r[0]
                for r in con.execute(
                    "SELECT column_name FROM duckdb_columns() WHERE database_name = 'lake' AND schema_name = 'store' "
                    "AND table_name = ?",
                    [table],
                ).fetchall()
            }
            for f in data.schema:
                if f.name not in have:  # a source's extra provenance column: schema evolution
                    con.execute(f'ALTER TABLE lake.store."{table}" ADD COLUMN "{f.name}" {_duck_type(f.type)}')
            con.register("_midicorpus_rows", data)
            try:
                con.execute(f'INSERT INTO lake.store."{table}" BY NAME SELECT * FROM _midicorpus_rows')
            finally:
                con.unregister("_midicorpus_rows")
        except Exception as exc:  # noqa: BLE001 - DuckDB's and the catalog's errors; others pass through _cause/_failed
            raise self._failed(exc, f"writing {table} rows") from None
        self.rows[table] = self.rows.get(table, 0) + data.num_rows

    def replace_rows(self, table: str, key: str, data: pa.Table | list[dict[str, Any]]) -> None:
        """Replace the rows of ``table`` whose ``key`` is among the new rows' keys with the new rows
        (a DELETE and an INSERT in this transaction): an update in proportion to what changed."""
        if isinstance(data, list):
            if not data:
                return
            data = rows_to_table(table, data)
        if data.num_rows == 0:
            return
        con = self._con()
        keys = pa.table({"k": data.column(key)})
        con.register("_midicorpus_keys", keys)
        try:
            con.execute(f'DELETE FROM lake.store."{table}" WHERE "{key}" IN (SELECT k FROM _midicorpus_keys)')
        except Exception as exc:  # noqa: BLE001 - DuckDB's and the catalog's errors; others pass through _failed
            raise self._failed(exc, f"replacing {table} rows") from None
        finally:
            con.unregister("_midicorpus_keys")
        self.write(table, data)

    def delete_matching(self, table: str, keys: pa.Table, where: str = "true", params: Sequence[Any] = ()) -> None:
        """Delete the rows of ``table`` that match a row of ``keys`` on all its columns and ``where``
        (SQL over the table's columns, ``?`` bound to ``params``), in this transaction."""
        if keys.num_rows == 0:
            return
        con = self._con()
        on = " AND ".join(f'k."{c}" = t."{c}"' for c in keys.column_names)
        con.register("_midicorpus_keys", keys)
        try:
            con.execute(
                f'DELETE FROM lake.store."{table}" t WHERE ({where}) AND EXISTS (SELECT 1 FROM _midicorpus_keys k WHERE {on})',
                list(params),
            )
        except Exception as exc:  # noqa: BLE001 - DuckDB's and the catalog's errors; others pass through _failed
            raise self._failed(exc, f"deleting {table} rows") from None
        finally:
            con.unregister("_midicorpus_keys")

    def write_select(self, table: str, select_sql: str) -> int:
        """Add the rows of a DuckDB SELECT (columns by name) to ``table``, streamed by DuckDB (no
        Arrow copy in Python); returns the number of rows. For bulk moves such as ``lake upgrade``."""
        if table not in TABLES:
            raise KeyError(f"unknown table {table!r}")
        con = self._con()
        try:
            n = con.execute(f'INSERT INTO lake.store."{table}" BY NAME {select_sql}').fetchone()[0]
        except Exception as exc:  # noqa: BLE001 - DuckDB's and the catalog's errors; others pass through _failed
            raise self._failed(exc, f"writing {table} rows") from None
        self.rows[table] = self.rows.get(table, 0) + int(n)
        return int(n)

    def _failed(self, exc: BaseException, what: str) -> BaseException:
        import duckdb

        if isinstance(exc, LakeError):
            return exc
        if not isinstance(exc, duckdb.Error | OSError):
            return exc
        cause = _cause(exc)
        if cause == " ".join(str(exc).split()) and not self.lake.remote:
            # SQLite's "disk is full" can reach us only as a failed ROLLBACK inside DuckLake's commit
            with contextlib.suppress(OSError):
                if shutil.disk_usage(self.lake.root).free < (1 << 20):
                    cause = f"{os.strerror(errno.ENOSPC)} (ENOSPC)"
        return LakeError(f"cannot write to the lake {self.lake.location!r} while {what}: {cause}; {_NOT_COMMITTED}")

    def abort(self) -> None:
        """Drop what this transaction wrote (DuckLake forgets it; its files go at the next maintenance)."""
        if self._begun:
            self._begun = False
            with contextlib.suppress(Exception):
                self.lake._writer.execute("ROLLBACK")

    def commit(self) -> None:
        if not self._begun:
            return
        lake = self.lake
        if lake.remote:
            lease = lake._lease
            if lease is not None and lease.lost:
                self.abort()
                raise LakeError(
                    f"lost the lock of {lake.location!r} (its lease expired and another writer took it); {_NOT_COMMITTED}"
                )
            try:
                lake._flush_raw()  # no committed row names a raw file that is not stored
            except LakeError:
                self.abort()
                raise
        con = lake._writer
        info = {"txid": self.txid, "tables": self.rows, "meta": self.meta}
        try:
            con.execute(
                "CALL ducklake_set_commit_message('lake', 'midicorpus', 'data', extra_info => ?)",
                [json.dumps(info, sort_keys=True, default=str)],
            )
            con.execute("COMMIT")
        except Exception as exc:  # noqa: BLE001 - DuckDB's and the catalog's errors; others pass through _cause/_failed
            self.abort()
            raise self._failed(exc, "committing") from None
        self._begun = False


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


def declared_fields(table: str) -> list[pa.Field]:
    """The columns of ``table`` in the catalog: its schema, its partition keys (VARCHAR), and for
    ``pieces`` the typed provenance columns sources add."""
    fields = list(TABLES[table]) + [pa.field(k, pa.string()) for k in PARTITIONS[table]]
    if table == "pieces":
        fields += [pa.field(k, t) for k, t in PIECE_EXTRAS.items()]
    return fields


def _q(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def views_sql(prefix: str, present: Mapping[str, set[str]] | None = None) -> str:
    """``schemas/views.sql`` with each ``{table}`` read from ``prefix.table``.

    ``present`` (an older lake version's tables and their columns) reads each table with this
    version's columns: a column added later reads as NULL, a table created later as no rows, so
    the views of today answer about any version (``sql --at``) instead of failing on a name."""
    sql = VIEWS_SQL.read_text()
    for t in TABLES:
        rel = f'{prefix}."{t}"'
        if present is not None:
            have = present.get(t)
            cols = ", ".join(
                f'"{f.name}"'
                if have is not None and f.name in have
                else f'CAST(NULL AS {_duck_type(f.type)}) AS "{f.name}"'
                for f in declared_fields(t)
            )
            rel = f"(SELECT {cols} FROM {rel})" if have is not None else f"(SELECT {cols} WHERE false)"
        sql = sql.replace("{" + t + "}", rel)
    return sql


def _present_columns(con: Any) -> dict[str, set[str]]:
    """The tables of the attached lake's ``store`` schema and their columns (at the attached version)."""
    rows = con.execute(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_catalog = 'lake' AND table_schema = 'store'"
    ).fetchall()
    out: dict[str, set[str]] = {}
    for table, column in rows:
        out.setdefault(table, set()).add(column)
    return out


def views_stamp() -> str:
    """What the views in a catalog were made from: a hash of the views' SQL and the tables' columns."""
    h = hashlib.sha256(VIEWS_SQL.read_bytes())
    for t in TABLES:
        h.update(f"\0{t}:".encode() + ",".join(f"{f.name} {f.type}" for f in declared_fields(t)).encode())
    return h.hexdigest()


_EXTENSION_FILES: dict[str, str | None] = {}


def _extension_file(name: str, version: str) -> str | None:
    """The extension file of the ``duckdb-extension-<name>`` package for this duckdb, if installed."""
    if name not in _EXTENSION_FILES:
        found = None
        with contextlib.suppress(ImportError):
            import importlib

            mod = importlib.import_module(f"duckdb_extension_{name}")
            for f in Path(mod.__file__).parent.rglob(f"{name}.duckdb_extension"):
                if f.parent.name.lstrip("v") == version:
                    found = str(f)
                    break
        _EXTENSION_FILES[name] = found
    return _EXTENSION_FILES[name]


def load_extensions(con: Any, *names: str) -> None:
    """LOAD ducklake and the named catalog extensions: the files of the ``duckdb-extension-<name>``
    packages first (no network), else an installed extension, else an INSTALL. Automatic
    downloads are switched off on ``con``, so an offline machine does not wait for one."""
    import duckdb

    version = duckdb.__version__.split("-")[0]
    con.execute("SET autoinstall_known_extensions = false")
    for name in ("ducklake", *names):
        path = _extension_file(name, version)
        if path is not None:
            try:
                con.execute(f"LOAD {_q(path)}")
                continue
            except duckdb.Error:
                pass
        try:
            con.execute(f"LOAD {name}")
            continue
        except duckdb.Error:
            pass
        try:
            con.execute(f"INSTALL {name}")
            con.execute(f"LOAD {name}")
        except duckdb.Error:
            raise LakeError(
                f"DuckDB's {name} extension cannot be loaded for duckdb {version}: "
                f"pip install duckdb-extension-{name}=={version}"
            ) from None


def ducklake_catalog(catalog: str) -> str:
    """A catalog as DuckLake's ATTACH wants it: ``sqlite:PATH`` as it is, a ``postgres://`` URL as
    libpq keywords (``postgres:dbname=... host=...``)."""
    from urllib.parse import parse_qsl, unquote, urlsplit

    if catalog.startswith(("sqlite:", "duckdb:")) or catalog.startswith("postgres:") and "://" not in catalog:
        return catalog
    u = urlsplit(catalog)
    if u.scheme not in {"postgres", "postgresql"}:
        raise LakeError(f"catalog {catalog!r} must be sqlite:PATH or postgres://USER@HOST:PORT/DB")
    parts = {"dbname": u.path.lstrip("/") or None, "host": u.hostname, "port": u.port, "user": u.username}
    if u.password:
        parts["password"] = unquote(u.password)
    parts.update(dict(parse_qsl(u.query)))
    kw = " ".join(f"{k}={unquote(str(v))}" for k, v in parts.items() if v not in (None, ""))
    return f"postgres:{kw}"


def catalog_public(catalog: str) -> str:
    """The catalog URL without its password (what the lake stores about itself)."""
    from urllib.parse import urlsplit, urlunsplit

    u = urlsplit(catalog)
    if u.scheme in {"postgres", "postgresql"} and u.password:
        netloc = (u.username or "") + "@" + (u.hostname or "") + (f":{u.port}" if u.port else "")
        return urlunsplit((u.scheme, netloc, u.path, u.query, u.fragment))
    return catalog


def _table_sql(table: str) -> str:
    """An empty typed SELECT of one table (the views of a lake with no catalog yet)."""
    cols = [f'CAST(NULL AS {_duck_type(f.type)}) AS "{f.name}"' for f in declared_fields(table)]
    return f"(SELECT {', '.join(cols)} WHERE false)"


def _create_empty_views(con: Any) -> None:
    sql = VIEWS_SQL.read_text()
    for t in TABLES:
        sql = sql.replace("{" + t + "}", _table_sql(t))
    con.execute(sql)
