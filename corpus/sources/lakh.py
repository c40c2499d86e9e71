"""The Lakh MIDI Dataset as distributed (https://colinraffel.com/projects/lmd/).

Layouts: ``lmd_full/<first hex digit>/<md5>.mid`` (a folder or ``lmd_full.tar.gz``), and
``lmd_matched`` / ``lmd_aligned`` where files sit under their Million Song Dataset track id
(``R/R/R/TRRRRRR.../<md5>.mid``). Optional sidecars beside the folder or archive (or inside
the folder): ``match_scores.json`` (MSD id -> {md5: score}) and ``md5_to_paths.json``
(md5 -> original paths from the crawl). Each file's LMD md5 (its name), MSD ids, match
scores and original file names become columns of ``pieces``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from corpus.sources.base import SourceItem
from corpus.sources.files import Limits, count_files, first_entry, walk

LICENSE = "CC-BY-4.0"
_MD5 = re.compile(r"^[0-9a-f]{32}$")
_MSD = re.compile(r"^TR[A-Z0-9]{16}$")


class LakhError(ValueError):
    pass


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise LakhError(f"cannot read {str(path)!r}: {exc}") from None


class LakhSource:
    name = "lakh"

    def __init__(self, path: str | os.PathLike[str], limits: Limits = Limits()) -> None:
        self.path = Path(path)
        self.limits = limits
        self.total: int | None = None  # a progress total, known once iteration starts
        self.unit = "files"
        if not self.path.exists():
            raise FileNotFoundError(f"no such file or folder: {str(path)!r}")
        self.match_scores: dict[str, dict[str, float]] = {}  # md5 -> {msd_id: score}
        self.md5_paths: dict[str, list[str]] = {}
        for where in {self.path.parent, self.path if self.path.is_dir() else self.path.parent}:
            ms, mp = where / "match_scores.json", where / "md5_to_paths.json"
            if ms.is_file() and not self.match_scores:
                for msd, by_md5 in _load_json(ms).items():
                    for md5, score in by_md5.items():
                        self.match_scores.setdefault(md5, {})[msd] = float(score)
            if mp.is_file() and not self.md5_paths:
                self.md5_paths = {k: list(v) for k, v in _load_json(mp).items()}

    def check_layout(self) -> None:
        """LakhError unless the folder or archive looks like the LMD: its first MIDI file sits under
        ``lmd_full`` / ``lmd_matched`` / ``lmd_aligned`` or is named by its MD5."""
        entry = first_entry(self.path)
        if entry is None:
            raise LakhError(
                f"{str(self.path)!r} holds no MIDI files; expected the Lakh MIDI Dataset (lmd_full / lmd_matched / lmd_aligned)"
            )
        inner = PurePosixPath(entry.relpath.replace("!", "/"))
        if any(p.startswith(("lmd_full", "lmd_matched", "lmd_aligned")) for p in (self.path.name, *inner.parts)):
            return
        if _MD5.match(inner.stem.lower()):
            return
        raise LakhError(
            f"{str(self.path)!r} does not look like the Lakh MIDI Dataset: expected lmd_full / lmd_matched / lmd_aligned "
            f"with files named by their MD5 (first file found: {entry.relpath!r}); for any other MIDI folder use: midicorpus ingest dir PATH"
        )

    def __iter__(self) -> Iterator[SourceItem]:
        self.total = count_files(self.path)
        for entry in walk(self.path, limits=self.limits):
            inner = entry.relpath.rsplit("!", 1)[-1]
            parts = PurePosixPath(inner).parts
            stem = PurePosixPath(inner).stem.lower()
            md5 = stem if _MD5.match(stem) else None
            msd_path = [p for p in parts if _MSD.match(p)]
            layout = next((p for p in parts if p.startswith(("lmd_full", "lmd_matched", "lmd_aligned"))), None)
            if layout is None:
                layout = "lmd_matched" if msd_path else "lmd_full"
            layout = layout.split(".")[0]
            scores = self.match_scores.get(md5 or "", {})
            msd_ids = sorted(set(msd_path) | set(scores))
            meta = {
                "lmd_md5": md5,
                "lmd_layout": layout,
                "msd_ids": msd_ids,
                "match_scores": json.dumps(dict(sorted(scores.items()))) if scores else None,
                "max_match_score": max(scores.values()) if scores else None,
                "original_names": self.md5_paths.get(md5 or "", []),
            }
            yield SourceItem(
                source=self.name,
                uri=entry.relpath,
                data=entry.data,
                name=entry.name,
                license=LICENSE,
                meta=meta,
                reject=entry.reject,
            )
