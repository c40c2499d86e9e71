"""An object store as the lake's root: ``s3://bucket/lake`` through fsspec/s3fs.

Settings come from the standard AWS variables, so the same lake works against AWS S3, MinIO
or any S3-compatible server:

- ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN`` or a profile
  (``AWS_PROFILE``, ``~/.aws/credentials``), resolved by botocore's usual chain;
- ``AWS_REGION`` (or ``AWS_DEFAULT_REGION``);
- ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` for a server other than AWS (MinIO:
  ``http://minio:9000``); with an endpoint, requests use path-style URLs unless
  ``MIDICORPUS_S3_URL_STYLE=vhost``.

DuckDB reads the tables with its own S3 client (the httpfs extension, given the same
credentials as a temporary secret). ``MIDICORPUS_DUCKDB_S3`` picks how: ``httpfs`` (fail if
it cannot load), ``fsspec`` (DuckDB reads through the same fsspec file system as the lake),
or ``auto`` (default: httpfs when it loads, from DuckDB's extension folder, the
``duckdb-extension-httpfs`` package or an ``INSTALL``, else fsspec).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from typing import Any


class ObjectStoreError(Exception):
    """Raised as LakeError by the lake (one line for the user)."""


def is_url(root: object) -> bool:
    return isinstance(root, str) and "://" in root and not root.startswith("file://")


def endpoint_url() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def open_fs(url: str) -> tuple[Any, str]:
    """``(filesystem, path without protocol)`` for a lake URL."""
    import fsspec

    protocol = url.split("://", 1)[0]
    options: dict[str, Any] = {}
    if protocol in {"s3", "s3a"}:
        try:
            import s3fs  # noqa: F401
        except ImportError:
            raise ObjectStoreError("an s3:// lake needs s3fs: pip install 'midicorpus[s3]'") from None
        client: dict[str, Any] = {}
        if endpoint_url():
            client["endpoint_url"] = endpoint_url()
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            client["region_name"] = region
        options = {"client_kwargs": client, "skip_instance_cache": True}
        if os.environ.get("MIDICORPUS_S3_URL_STYLE", "path" if endpoint_url() else "vhost") == "path":
            options["config_kwargs"] = {"s3": {"addressing_style": "path"}}
    try:
        fs, path = fsspec.core.url_to_fs(url, **options)
    except (ImportError, ValueError) as exc:
        raise ObjectStoreError(f"cannot open the lake {url!r}: {exc}") from None
    return fs, path.rstrip("/")


# ---------------------------------------------------------------------------- DuckDB
def _httpfs(con: Any) -> bool:
    """Load DuckDB's httpfs extension from wherever it can be had; True when loaded."""
    import duckdb

    try:
        con.execute("LOAD httpfs")
        return True
    except duckdb.Error:
        pass
    try:
        from pathlib import Path

        import duckdb_extension_httpfs

        version = duckdb.__version__.split("-")[0]
        for f in Path(duckdb_extension_httpfs.__file__).parent.rglob("httpfs.duckdb_extension"):
            if f.parent.name.lstrip("v") == version:
                con.execute(f"LOAD '{f}'")
                return True
    except (ImportError, duckdb.Error):
        pass
    try:
        con.execute("INSTALL httpfs")
        con.execute("LOAD httpfs")
        return True
    except duckdb.Error:
        return False


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _s3_secret_sql() -> str:
    import botocore.session

    session = botocore.session.get_session()
    creds = session.get_credentials()
    parts = ["TYPE s3"]
    if creds is not None:
        frozen = creds.get_frozen_credentials()
        parts += [f"KEY_ID {_quote(frozen.access_key)}", f"SECRET {_quote(frozen.secret_key)}"]
        if frozen.token:
            parts.append(f"SESSION_TOKEN {_quote(frozen.token)}")
    region = (
        os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or session.get_config_variable("region")
    )
    if region:
        parts.append(f"REGION {_quote(region)}")
    ep = endpoint_url()
    if ep:
        scheme, _, host = ep.partition("://")
        parts.append(f"ENDPOINT {_quote(host.rstrip('/'))}")
        parts.append(f"USE_SSL {'true' if scheme == 'https' else 'false'}")
    style = os.environ.get("MIDICORPUS_S3_URL_STYLE", "path" if ep else "vhost")
    parts.append(f"URL_STYLE {_quote(style)}")
    return "CREATE OR REPLACE TEMPORARY SECRET midicorpus_lake (" + ", ".join(parts) + ")"


def duckdb_attach(con: Any, fs: Any, protocol: str) -> str:
    """Let ``con`` read ``protocol://`` URLs; return how (``httpfs`` or ``fsspec``)."""
    mode = os.environ.get("MIDICORPUS_DUCKDB_S3", "auto")
    if mode not in {"auto", "httpfs", "fsspec"}:
        raise ObjectStoreError(f"MIDICORPUS_DUCKDB_S3 must be auto, httpfs or fsspec, got {mode!r}")
    if protocol in {"s3", "s3a"} and mode != "fsspec":
        if _httpfs(con):
            con.execute(_s3_secret_sql())
            return "httpfs"
        if mode == "httpfs":
            raise ObjectStoreError(
                "DuckDB's httpfs extension cannot be loaded (no network to INSTALL it?); "
                "pip install duckdb-extension-httpfs matching your duckdb, or MIDICORPUS_DUCKDB_S3=fsspec"
            )
    con.register_filesystem(fs)
    return "fsspec"


# ---------------------------------------------------------------------------- lock
class LeaseLock:
    """The lake's writer lock on an object store.

    The lock object is created only if absent (``If-None-Match: *``: two writers cannot both
    create it) and holds who took it and until when. A thread renews the lease every third
    of its time-to-live; a holder killed without releasing is taken over once its lease has
    expired, or at once when it was a process on this host that no longer exists.
    """

    def __init__(self, fs: Any, path: str, holder: str, ttl_s: float | None = None) -> None:
        self.fs = fs
        self.path = path
        self.holder = holder
        self.ttl_s = float(ttl_s if ttl_s is not None else os.environ.get("MIDICORPUS_LOCK_TTL", "120"))
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False

    def _body(self) -> bytes:
        return json.dumps(
            {
                "holder": self.holder,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "token": self.token,
                "expires": time.time() + self.ttl_s,
            }
        ).encode()

    def _read(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.fs.cat_file(self.path))
        except FileNotFoundError:
            return None
        except ValueError:
            return {}

    @staticmethod
    def _stale(info: dict[str, Any]) -> bool:
        if not info or float(info.get("expires", 0)) < time.time():
            return True
        if info.get("host") == socket.gethostname():
            try:
                os.kill(int(info.get("pid", -1)), 0)
            except ProcessLookupError:
                return True
            except (PermissionError, ValueError, OverflowError):
                return False
        return False

    def acquire(self) -> None | dict[str, Any]:
        """None when taken; the holder's record when someone else holds it."""
        for _ in range(2):
            try:
                self.fs.pipe_file(self.path, self._body(), mode="create")
                break
            except FileExistsError:
                info = self._read()
                if info is None:
                    continue  # released between our create and read
                if not self._stale(info):
                    return info
                self.fs.rm_file(self.path)  # an expired lease: take it over
        else:
            return self._read() or {"holder": "another process"}
        self._thread = threading.Thread(target=self._renew, name="midicorpus-lease", daemon=True)
        self._thread.start()
        return None

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                info = self._read()
                if not info or info.get("token") != self.token:
                    self.lost = True
                    return
                self.fs.pipe_file(self.path, self._body())
            except Exception:  # noqa: BLE001 - a network blip: try again at the next tick, the lease has slack
                continue

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            info = self._read()
            if info and info.get("token") == self.token:
                self.fs.rm_file(self.path)
        except Exception:  # noqa: BLE001
            pass  # the lease expires by itself
