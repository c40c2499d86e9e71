"""The parser child process (see :mod:`corpus.sandbox`). Not for direct use."""

from __future__ import annotations

import importlib
import os
import pickle
import resource
import struct
import sys

_HDR = struct.Struct(">Q")


def _read_exact(fh, n: int) -> bytes:  # type: ignore[no-untyped-def]
    buf = b""
    while len(buf) < n:
        chunk = fh.read(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def main() -> None:
    target, memory_mb = sys.argv[1], int(sys.argv[2])
    module, _, name = target.partition(":")
    func = getattr(importlib.import_module(module), name)
    import symusic  # noqa: F401 - loaded before the limit so the limit measures the file's cost

    from corpus.parse import Reject

    if memory_mb > 0:
        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    fin, fout = sys.stdin.buffer, sys.stdout.buffer
    # keep stdout for the protocol only
    sys.stdout = sys.stderr
    while True:
        try:
            (size,) = _HDR.unpack(_read_exact(fin, _HDR.size))
            data, kwargs = pickle.loads(_read_exact(fin, size))
        except EOFError:
            return
        try:
            out: tuple = ("ok", func(data, **kwargs))
        except Reject as rej:
            out = ("reject", rej.reason, rej.detail)
        except MemoryError as exc:
            out = ("reject", "parse_memory", f"MemoryError beyond {memory_mb} MB: {exc}")
        except Exception as exc:  # noqa: BLE001 - any other parser failure is a reject with its text
            out = ("reject", "parse_error", f"{type(exc).__name__}: {exc}")
        body = pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL)
        fout.write(_HDR.pack(len(body)) + body)
        fout.flush()
        del data


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
