"""Parser targets that really crash, hang or exhaust memory, for the sandbox tests."""

from __future__ import annotations

import ctypes
import time
from typing import Any

from corpus.parse import analyse


def faulty(data: bytes, **kwargs: Any) -> Any:
    if data.startswith(b"SEGV"):
        ctypes.string_at(0)  # a real segmentation fault in the parser process
    if data.startswith(b"HANG"):
        time.sleep(3600)
    if data.startswith(b"BLOAT"):
        hog = [bytearray(64 << 20) for _ in range(1000)]  # 64 GB: beyond any memory limit
        return len(hog)
    return analyse(data, **kwargs)
