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
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

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


def new_txid() -> str:
    """Time-ordered, unique transaction id."""
    return f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Lake:
    """One lake root. Cheap to construct; writers take :meth:`lock` first."""

    def __init__(self, root: str | os.PathLike[str] = DEFAULT_LAKE) -> None:
        self.root = Path(root).absolute()
        self._lock_fh: Any = None

    # ---------------------------------------------------------------- paths
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

    def exists(self) -> bool:
        return self.log_dir.is_dir()

    # ---------------------------------------------------------------- lock
    @contextlib.contextmanager
    def lock(self, command: str = "") -> Iterator[Lake]:
        """Hold the lake's writer lock; a second writer gets :class:`LakeLocked` at once."""
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

    def create(self) -> None:
        try:
            for d in (self.raw_dir, self.tables_dir, self.log_dir, self.staging_dir):
                d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LakeError(f"cannot create the lake at {str(self.root)!r}: {exc.strerror or exc}") from None
        if not os.access(self.root, os.W_OK):
            raise LakeError(f"lake {str(self.root)!r} is not writable")

    def recover(self) -> None:
        """Finish committed transactions and drop uncommitted ones (after a crash)."""
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

    # ---------------------------------------------------------------- raw store
    def raw_path(self, sha: str) -> Path:
        return self.raw_dir / sha[:2] / f"{sha}.mid"

    def put_raw(self, data: bytes, sha: str | None = None) -> str:
        """Store bytes once under their sha256; return the sha. Never modifies a stored file."""
        sha = sha or hashlib.sha256(data).hexdigest()
        path = self.raw_path(sha)
        if not path.exists():
            try:
                atomic_write_bytes(path, data, self.staging_dir / "tmp")
            except OSError as exc:
                raise _write_error(exc, self.root, "storing a raw file", _NOT_COMMITTED) from None
        return sha

    def get_raw(self, sha: str) -> bytes:
        return self.raw_path(sha).read_bytes()

    # ---------------------------------------------------------------- transactions
    @contextlib.contextmanager
    def transaction(self, meta: Mapping[str, Any] | None = None) -> Iterator[Transaction]:
        if self._lock_fh is None:
            raise RuntimeError("write to the lake inside Lake.lock()")
        tx = Transaction(self, dict(meta or {}))
        try:
            yield tx
        except BaseException:
            shutil.rmtree(tx.stage, ignore_errors=True)
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
        if not self.log_dir.is_dir():
            return []
        out = []
        for p in sorted(self.log_dir.glob("*.json")):
            out.append(json.loads(p.read_text()))
        return out

    def table_files(self) -> dict[str, list[str]]:
        """Committed files per table, as absolute paths, in commit order.

        A transaction interrupted after its commit point (killed, or its move failed) still
        has files in ``_staging/<txid>/`` until the next writer moves them: they are read there.
        """
        files: dict[str, list[str]] = {}
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
        _create_views(con, self.table_files())
        return con

    def query(self, sql: str, params: Sequence[Any] | None = None) -> pa.Table:
        con = self.connect()
        try:
            return con.sql(sql, params=params).to_arrow_table() if params else con.sql(sql).to_arrow_table()
        finally:
            con.close()

    def write_catalog(self) -> None:
        """(Re)write ``catalog.duckdb`` with views over the tables' globs, atomically."""
        import duckdb

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
        self.stage = lake.staging_dir / self.txid
        self.files: dict[str, list[str]] = {}
        self.rows: dict[str, int] = {}

    def write(self, table: str, data: pa.Table | list[dict[str, Any]], partition: Mapping[str, str] | None = None) -> None:
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
        dst = self.stage / rel
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(data, dst, compression="zstd")
        except OSError as exc:  # the caller's ``with lake.transaction()`` drops the stage
            raise _write_error(exc, self.lake.root, f"staging {table} rows", _NOT_COMMITTED) from None
        self.files.setdefault(table, []).append(rel)
        self.rows[table] = self.rows.get(table, 0) + data.num_rows

    def commit(self) -> None:
        if not self.files:
            shutil.rmtree(self.stage, ignore_errors=True)
            return
        record = {
            "txid": self.txid,
            "committed_at": now_utc().isoformat(),
            "files": self.files,
            "rows": self.rows,
            "meta": self.meta,
        }
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
