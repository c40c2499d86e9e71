from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO))


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("MIDICORPUS_DEBUG", "")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"real test data not found at {DATA} (shared/ must sit beside the repository)")
    return DATA


@pytest.fixture
def lake(tmp_path: Path):
    from corpus.lake import Lake

    return Lake(tmp_path / "lake")


def midi_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in {".mid", ".midi", ".kar", ".rmi"})
