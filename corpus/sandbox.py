"""Run untrusted parsing in a child process with a time limit and a memory limit.

One long-lived child per worker thread does the parsing; bytes go in and results come back
over pipes (length-prefixed pickles). A file that makes the child hang past the time limit
is rejected with ``parse_timeout``, one that kills it (segfault, abort) with
``parser_crash``, one that exhausts its address space with ``parse_memory``; the child is
restarted and the next file goes on. Costs ~0.1 ms of IPC per file.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from typing import Any

DEFAULT_TIMEOUT_S = 20.0
DEFAULT_MEMORY_MB = 2048
DEFAULT_TARGET = "corpus.parse:analyse"

_HDR = struct.Struct(">Q")


class _ChildGone(Exception):
    pass


class ParserProcess:
    """A parser child process. ``run(data)`` returns ``("ok", result)`` or ``("reject", reason, detail)``."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        memory_mb: int = DEFAULT_MEMORY_MB,
        **kwargs: Any,
    ) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        self.kwargs = kwargs
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def _start(self) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "corpus._parse_child", self.target, str(self.memory_mb)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        return self.proc

    def _kill(self) -> None:
        if self.proc is not None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass
            self.proc.wait()
            for fh in (self.proc.stdin, self.proc.stdout):
                if fh is not None:
                    fh.close()
            self.proc = None

    def close(self) -> None:
        self._kill()

    def __del__(self) -> None:  # best effort; workers exit anyway
        try:
            self._kill()
        except Exception:  # noqa: BLE001 - interpreter shutdown, nothing to report to
            pass

    def run(self, data: bytes) -> tuple[Any, ...]:
        proc = self.proc if self.proc is not None and self.proc.poll() is None else self._start()
        payload = pickle.dumps((data, self.kwargs), protocol=pickle.HIGHEST_PROTOCOL)
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(_HDR.pack(len(payload)) + payload)
            proc.stdin.flush()
            deadline = time.monotonic() + self.timeout_s
            head = self._read(proc, _HDR.size, deadline)
            (size,) = _HDR.unpack(head)
            body = self._read(proc, size, deadline)
        except TimeoutError:
            self._kill()
            self.restarts += 1
            return ("reject", "parse_timeout", f"no answer within {self.timeout_s:g} s")
        except (_ChildGone, BrokenPipeError, OSError):
            code = proc.wait()
            self._kill()
            self.restarts += 1
            if code < 0:
                try:
                    name = signal.Signals(-code).name
                except ValueError:
                    name = f"signal {-code}"
                return ("reject", "parser_crash", f"parser killed by {name}")
            return ("reject", "parser_crash", f"parser exited with status {code}")
        return pickle.loads(body)  # type: ignore[no-any-return]

    @staticmethod
    def _read(proc: subprocess.Popen[bytes], n: int, deadline: float) -> bytes:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        chunks = []
        while n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                raise TimeoutError
            chunk = os.read(fd, min(n, 1 << 20))
            if not chunk:
                raise _ChildGone
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)


_local = threading.local()


def shared_parser(
    target: str = DEFAULT_TARGET,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    memory_mb: int = DEFAULT_MEMORY_MB,
    **kwargs: Any,
) -> ParserProcess:
    """The calling thread's parser child for these settings (started on first use)."""
    key = (target, timeout_s, memory_mb, tuple(sorted(kwargs.items())))
    cache = getattr(_local, "parsers", None)
    if cache is None:
        cache = _local.parsers = {}
    if key not in cache:
        cache[key] = ParserProcess(target, timeout_s, memory_mb, **kwargs)
    return cache[key]  # type: ignore[no-any-return]
