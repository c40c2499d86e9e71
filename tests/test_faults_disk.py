"""A full disk and an unwritable lake: one line, exit 2, and the lake reads as it did before.

Real faults, not mocks: a small tmpfs filled to a given number of free pages (ENOSPC at
each write of a command in turn: the lock, raw files, staging, the commit record, the
catalog), a file size limit (EFBIG), read-only bind mounts of the lake or one of its
folders (EROFS), and a lake owned by another user (EACCES). Mounting needs root (CAP_SYS_ADMIN);
without it those tests skip.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from corpus.lake import Lake
from tests.test_ingest import snapshot_tables

REPO = Path(__file__).resolve().parents[1]
PAGE = 4096
QUERY = "SELECT source, status, count(*) AS n, count(DISTINCT piece_id) AS pieces FROM pieces GROUP BY ALL ORDER BY ALL"


def cli(
    lake: Path, *args: str, workers: str = "0", preexec: Callable[[], None] | None = None
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "corpus.cli", "--lake", str(lake), "--workers", workers, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        preexec_fn=preexec,
    )


def answer(lake: Path, preexec: Callable[[], None] | None = None) -> list[dict]:
    r = cli(lake, "sql", QUERY, "--format", "json", preexec=preexec)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def one_line_error(r: subprocess.CompletedProcess[str], *needles: str) -> str:
    """The command failed with exit 2 and exactly one 'midicorpus: error:' line, no traceback."""
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("midicorpus:")]
    assert len(lines) == 1 and lines[0].startswith("midicorpus: error: "), r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def assert_no_partial_state(lake: Path) -> None:
    assert not list((lake / "_staging").iterdir())
    leftovers = [p for p in lake.rglob(".*") if p.name != ".lock"]  # temp files of raw, log, catalog writes
    assert not leftovers, leftovers


def _mount(*args: str) -> None:
    r = subprocess.run(["mount", *args], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount here ({' '.join(args)}): {r.stderr.strip()}")


@contextlib.contextmanager
def mounted(target: Path, *args: str) -> Iterator[Path]:
    _mount(*args, str(target))
    try:
        yield target
    finally:
        if subprocess.run(["umount", str(target)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(target)], capture_output=True)


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[Path]:
    """``path`` read-only for everyone, root included (a read-only bind mount onto itself)."""
    with mounted(path, "--bind", str(path)):
        _mount("-o", "remount,bind,ro", str(path))
        yield path


def fill(disk: Path, leave: int) -> Path:
    """Fill the tmpfs at ``disk`` so that exactly ``leave`` bytes (whole pages) stay free."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for chunk in (1 << 16, PAGE):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * chunk)
        os.ftruncate(fd, max(0, os.fstat(fd).st_size - leave))
    finally:
        os.close(fd)
    return filler


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    disk = tmp_path / "disk"
    disk.mkdir()
    with mounted(disk, "-t", "tmpfs", "-o", "size=4m", "tmpfs"):
        yield disk


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict[str, Path]:
    """A small lake (11 Magenta files as source a) and, for comparison, it plus the same files as source b."""
    root = tmp_path_factory.mktemp("base")
    r = cli(root / "lake", "ingest", "dir", str(data_dir / "midi" / "magenta"), "--source", "a")
    assert r.returncode == 0, r.stderr
    shutil.copytree(root / "lake", root / "plus_b")
    r = cli(root / "plus_b", "ingest", "dir", str(data_dir / "midi" / "magenta"), "--source", "b")
    assert r.returncode == 0, r.stderr
    return {"lake": root / "lake", "plus_b": root / "plus_b"}


def test_full_disk_at_each_write_of_a_commit(small_disk: Path, base: dict[str, Path], data_dir: Path) -> None:
    """Free space from 0 to a few pages: the command fails at the lock, staging, the commit record
    or the catalog in turn; each time one line, and the lake answers as before (or, when the error
    says the tables were committed, as after)."""
    before, after = answer(base["lake"]), answer(base["plus_b"])
    lake = small_disk / "lake"
    where: set[str] = set()
    for pages in (0, 1, 2, 3, 4, 6):
        shutil.rmtree(lake, ignore_errors=True)
        shutil.copytree(base["lake"], lake)
        filler = fill(small_disk, pages * PAGE)
        r = cli(lake, "ingest", "dir", str(data_dir / "midi" / "magenta"), "--source", "b")
        filler.unlink()
        if r.returncode == 0:
            assert answer(lake) == after
            continue
        line = one_line_error(r, f"cannot write to the lake {str(lake)!r} while ", "No space left on device (ENOSPC)")
        where.add(line.split(" while ", 1)[1].split(":", 1)[0])
        assert answer(lake) == (after if "the tables are committed" in line else before), line
        assert_no_partial_state(lake)
    assert len(where) >= 3, where  # the sweep reached several different writes
    # with space again, the same command finishes the work: as an uninterrupted run
    r = cli(lake, "ingest", "dir", str(data_dir / "midi" / "magenta"), "--source", "b")
    assert r.returncode == 0, r.stderr
    assert snapshot_tables(Lake(lake)) == snapshot_tables(Lake(base["plus_b"]))


def test_full_disk_while_storing_raw_files(small_disk: Path, base: dict[str, Path], data_dir: Path) -> None:
    """More bytes than fit (5 MB into a 4 MB disk), through a real Dask cluster."""
    before = answer(base["lake"])
    lake = small_disk / "lake"
    shutil.copytree(base["lake"], lake)
    commits = len(Lake(lake).commits())
    r = cli(lake, "ingest", "dir", str(data_dir), "--source", "all", workers="1")
    one_line_error(r, "while storing a raw file: No space left on device (ENOSPC)", "committed work is kept")
    assert answer(lake) == before and len(Lake(lake).commits()) == commits
    assert_no_partial_state(lake)


def _file_size_limit() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so a write past the limit fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))


def test_file_too_large_for_the_limit(tmp_path: Path, base: dict[str, Path], data_dir: Path) -> None:
    before = answer(base["lake"])
    lake = tmp_path / "lake"
    shutil.copytree(base["lake"], lake)
    r = cli(lake, "ingest", "dir", str(data_dir / "lakh"), "--source", "big", preexec=_file_size_limit)
    one_line_error(r, "File too large (EFBIG)")
    assert answer(lake) == before
    assert_no_partial_state(lake)


def test_read_only_lake(tmp_path: Path, base: dict[str, Path], data_dir: Path) -> None:
    before = answer(base["lake"])
    lake = tmp_path / "lake"
    shutil.copytree(base["lake"], lake)
    with read_only(lake):
        for args in (
            ("ingest", "dir", str(data_dir / "midi" / "magenta"), "--source", "b"),
            ("curate",),
            ("tokenize", "--scheme", "remi"),
        ):
            one_line_error(cli(lake, *args), f"lake {str(lake)!r} is not writable")
        assert answer(lake) == before  # reading needs no write
    assert snapshot_tables(Lake(lake)) == snapshot_tables(Lake(base["lake"]))


@pytest.mark.parametrize(
    "folder, needle",
    [
        ("data", " rows: Read-only file system (EROFS)"),
        ("raw", "while storing a raw file: Read-only file system (EROFS)"),
    ],
    ids=["table-data", "raw-store"],
)
def test_read_only_part_of_the_lake_aborts_cleanly(
    folder: str, needle: str, tmp_path: Path, base: dict[str, Path], data_dir: Path
) -> None:
    """The tables' data files cannot be written (DuckLake's data/), or the raw store: nothing is committed,
    staging is cleaned, and the same command succeeds once the lake is writable again."""
    before = answer(base["lake"])
    lake = tmp_path / "lake"
    shutil.copytree(base["lake"], lake)
    src = data_dir / "midi" / "magenta" if folder == "data" else data_dir / "lakh"
    commits = len(Lake(lake).commits())
    with read_only(lake / folder):
        one_line_error(cli(lake, "ingest", "dir", str(src), "--source", "b"), needle)
        assert answer(lake) == before and len(Lake(lake).commits()) == commits
        assert not list((lake / "_staging").iterdir())
    assert_no_partial_state(lake)
    r = cli(lake, "ingest", "dir", str(src), "--source", "b")
    assert r.returncode == 0, r.stderr


def test_lake_of_another_user(base: dict[str, Path], data_dir: Path) -> None:
    """EACCES: the lake belongs to root; user nobody can read it but not write it."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run a command as another user")
    before = answer(base["lake"])
    top = Path(tempfile.mkdtemp(prefix="midicorpus-eacces-"))  # outside pytest's 0700 temp folders
    try:
        os.chmod(top, 0o755)
        lake = top / "lake"
        shutil.copytree(base["lake"], lake)

        def nobody() -> None:
            os.setgid(65534)
            os.setuid(65534)

        try:
            r = cli(lake, "ingest", "dir", str(data_dir / "midi" / "magenta"), "--source", "b", preexec=nobody)
        except PermissionError as exc:  # e.g. the interpreter lives under root's 0700 home
            pytest.skip(f"user nobody cannot run this Python: {exc}")
        one_line_error(r, f"lake {str(lake)!r} is not writable")
        assert answer(lake, preexec=nobody) == before
    finally:
        shutil.rmtree(top, ignore_errors=True)
