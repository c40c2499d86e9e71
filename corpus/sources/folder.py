"""Any folder or archive of MIDI files (``ingest dir``)."""

from __future__ import annotations

import os
from collections.abc import Iterator

from corpus.sources.base import SourceItem
from corpus.sources.files import Limits, count_files, walk


class DirSource:
    """Every ``.mid/.midi/.kar/.rmi`` file (any case) in a folder or archive, recursively."""

    def __init__(
        self, path: str | os.PathLike[str], name: str = "dir", license: str | None = None, limits: Limits = Limits()
    ) -> None:
        self.path = path
        self.name = name
        self.license = license
        self.limits = limits
        self.total: int | None = None  # files to read, known once iteration starts (a progress total)
        self.unit = "files"

    def __iter__(self) -> Iterator[SourceItem]:
        self.total = count_files(self.path)
        for entry in walk(self.path, limits=self.limits):
            yield SourceItem(
                source=self.name,
                uri=entry.relpath,
                data=entry.data,
                name=entry.name,
                license=self.license,
                reject=entry.reject,
            )
