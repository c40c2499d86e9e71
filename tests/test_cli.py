"""The command line: one clear line and a non-zero exit on bad input, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, lake: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "corpus.cli", "--lake", str(lake), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


@pytest.mark.parametrize(
    "args, needle",
    [
        (("ingest", "dir", "/no/such/folder"), "no such file or folder: '/no/such/folder'"),
        (("ingest", "lakh", "/no/such/lmd_full.tar.gz"), "no such file or folder"),
        (("ingest", "lpd", "/no/such/lpd"), "no such file or folder"),
        (("ingest", "napster", "x"), "invalid choice: 'napster'"),
        (("sql", "SELEC 1"), "SQL error: Parser Error"),
        (("sql", "SELECT * FROM no_such_view"), "SQL error: Catalog Error"),
        (("--workers", "-1", "sql", "SELECT 1"), "expected 0 or more workers"),
        (("ingest", "dir", str(REPO / "pyproject.toml")), "is neither a folder, an archive"),
        (("ingest", "dir", ".", "--source", "a/b"), "--source must be letters"),
        (("ingest", "music21", "--limit", "-3"), "--limit must be >= 0"),
    ],
    ids=lambda v: v[1] if isinstance(v, tuple) and len(v) > 1 and isinstance(v[0], str) else None,
)
def test_bad_input_is_one_line(args: tuple[str, ...], needle: str, tmp_path: Path) -> None:
    from corpus.lake import Lake

    Lake(tmp_path / "lake").create()  # an empty lake: the views exist, the input is what is wrong
    r = cli(*args, lake=tmp_path / "lake")
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_sql_formats(tmp_path: Path, data_dir: Path) -> None:
    lake = tmp_path / "lake"
    r = cli(
        "--workers",
        "1",
        "ingest",
        "dir",
        str(data_dir / "midi/magenta"),
        "--source",
        "magenta",
        "--license",
        "Apache-2.0",
        lake=lake,
    )
    assert r.returncode == 0, r.stderr
    assert "11 inputs = 11 ok + 0 rejected + 0 duplicate" in r.stdout
    q = "SELECT name, license, status FROM pieces ORDER BY name LIMIT 2"
    out = json.loads(cli("sql", q, "--format", "json", lake=lake).stdout)
    assert out == [
        {"name": "english1.mid", "license": "Apache-2.0", "status": "ok"},
        {"name": "english2.mid", "license": "Apache-2.0", "status": "ok"},
    ]
    csv = cli("sql", q, "--format", "csv", lake=lake).stdout.splitlines()
    assert csv == ["name,license,status", "english1.mid,Apache-2.0,ok", "english2.mid,Apache-2.0,ok"]
    table = cli("sql", q, lake=lake).stdout.splitlines()
    assert table[0].split() == ["name", "license", "status"] and table[2].split() == [
        "english1.mid",
        "Apache-2.0",
        "ok",
    ]
    # the DuckDB shell on the same views
    r = cli("lake", "shell", "-c", "SELECT count(*) AS n FROM features", lake=lake)
    assert r.returncode == 0 and "│ 11 │" in r.stdout.replace("  ", " ").replace("  ", " "), r.stdout + r.stderr


def test_sql_on_an_empty_lake_sees_empty_views(tmp_path: Path) -> None:
    from corpus.lake import Lake

    Lake(tmp_path / "empty").create()
    r = cli("sql", "SELECT count(*) AS n FROM pieces", "--format", "json", lake=tmp_path / "empty")
    assert r.returncode == 0 and json.loads(r.stdout) == [{"n": 0}]
    r = cli("sql", "SELECT count(*) AS n FROM pieces", "--format", "json", lake=tmp_path / "nothing")  # a typo'd --lake
    assert r.returncode == 2 and r.stderr.startswith(f"midicorpus: error: no lake at {tmp_path / 'nothing'}; ")


def test_locked_lake_is_a_clear_message(tmp_path: Path, data_dir: Path) -> None:
    from corpus.lake import Lake

    lake = Lake(tmp_path / "lake")
    with lake.lock("ingest elsewhere"):
        r = cli("ingest", "dir", str(data_dir / "midi/magenta"), lake=lake.root)
    assert r.returncode == 2 and "is locked by pid" in r.stderr and "ingest elsewhere" in r.stderr


def test_unwritable_lake_is_a_clear_message(tmp_path: Path, data_dir: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root ignores file permissions")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    r = cli("ingest", "dir", str(data_dir / "midi/magenta"), lake=ro / "lake")
    assert r.returncode == 2 and "cannot create the lake" in r.stderr


def test_music21_source_converts_and_skips_what_is_there(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    r = cli("--workers", "1", "ingest", "music21", "--limit", "5", lake=lake)
    assert r.returncode == 0, r.stderr
    assert "5 inputs = 5 ok + 0 rejected + 0 duplicate" in r.stdout
    r = cli("--workers", "1", "ingest", "music21", "--limit", "6", lake=lake)
    assert "1 inputs = 1 ok + 0 rejected + 0 duplicate" in r.stdout, r.stdout
    cols = json.loads(
        cli(
            "sql",
            "SELECT DISTINCT music21_collection AS c, license FROM pieces ORDER BY c",
            "--format",
            "json",
            lake=lake,
        ).stdout
    )
    assert [c["c"] for c in cols] == ["bach", "monteverdi", "palestrina", "ryansMammoth", "trecento"]
    assert {c["license"] for c in cols} == {"PD"}
