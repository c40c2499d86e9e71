"""The contract every source follows.

A source is any iterable of :class:`SourceItem`. The ingest step hashes the bytes, stores
them once in the raw store, records one ``pieces`` row per item (its provenance) and parses
new bytes. A source that cannot read an input still yields an item, with ``reject`` set,
so every input is accounted for.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from corpus.reasons import check_reason


@dataclass(frozen=True)
class SourceItem:
    """One input of a source: its identity, its bytes (MIDI) and its provenance.

    ``uri`` identifies the item within its source and stays the same across runs (a path
    relative to the source root, ``archive.tar.gz!member``, or a URL). ``meta`` holds
    source-specific provenance that becomes columns of ``pieces`` (for example ``lmd_md5``,
    ``msd_ids``, ``mutopia_id``); a source keeps the type of each key the same for every
    item.
    """

    source: str
    uri: str
    data: bytes | None
    name: str = ""
    license: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    reject: tuple[str, str] | None = None  # (reason code, detail) when data could not be had

    def __post_init__(self) -> None:
        if self.reject is not None:
            check_reason(self.reject[0])
        elif self.data is None:
            raise ValueError(f"SourceItem {self.uri!r} has neither data nor a reject reason")


class Source(Protocol):
    """Anything that yields items; ``name`` is the value of the ``source`` column."""

    name: str

    def __iter__(self) -> Iterator[SourceItem]: ...
