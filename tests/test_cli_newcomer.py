"""The first ten minutes of a new user (issue 15), on the real command: a lake that is not there,
a closed pipe, a write statement to ``sql``, sources that are not what they claim, re-runs
that say what they skipped, progress when stderr is a file."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(REPO), MIDICORPUS_DEBUG="")


def cli(
    *args: str, lake: Path | str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "corpus.cli", "--lake", str(lake), *args],
        capture_output=True,
        text=True,
        env=env or ENV,
        timeout=600,
        cwd=cwd,
    )


def no_lake_line(path: Path) -> str:
    return (
        f"midicorpus: error: no lake at {path}; create one with midicorpus ingest (dir|lakh|lpd|music21) ..., "
        "or give --lake (env MIDICORPUS_LAKE) of an existing one\n"
    )


@pytest.fixture(scope="module")
def small_lake(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    lake = tmp_path_factory.mktemp("newcomer") / "lake"
    r = cli("--workers", "0", "ingest", "dir", str(data_dir / "midi" / "magenta"), "--source", "magenta", lake=lake)
    assert r.returncode == 0, r.stderr
    return lake


# ------------------------------------------------------------------ a lake that is not there
READERS = [
    ("sql", "SELECT count(*) FROM pieces"),
    ("snapshot", "list"),
    ("snapshot", "show", "default"),
    ("snapshot", "verify", "default"),
    ("report",),
    ("curate",),
    ("tokenize", "--scheme", "remi"),
    ("train", "--snapshot", "default"),
    ("similar", "abc"),
]


@pytest.mark.parametrize("args", READERS, ids=lambda a: " ".join(a[:2]))
def test_reading_a_missing_lake_is_one_line_and_exit_2(args: tuple[str, ...], tmp_path: Path) -> None:
    typo = tmp_path / "lakee"
    r = cli(*args, lake=typo)
    assert (r.returncode, r.stderr, r.stdout) == (2, no_lake_line(typo), "")
    assert not typo.exists()  # nothing was created on the way


def test_default_lake_in_an_empty_folder(tmp_path: Path) -> None:
    env = {k: v for k, v in ENV.items() if k != "MIDICORPUS_LAKE"}
    r = subprocess.run(
        [sys.executable, "-m", "corpus.cli", "sql", "SELECT count(*) FROM pieces"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert (r.returncode, r.stderr) == (2, no_lake_line(tmp_path / "lake"))


@pytest.mark.parametrize(
    "args", [("sql", "SELECT 1"), ("snapshot", "list"), ("ingest", "dir", "."), ("report",)], ids=lambda a: a[0]
)
def test_a_lake_that_is_a_regular_file(args: tuple[str, ...], tmp_path: Path, data_dir: Path) -> None:
    f = tmp_path / "notes.txt"
    f.write_text("not a lake\n")
    args = tuple(str(data_dir / "midi" / "magenta") if a == "." else a for a in args)
    r = cli(*args, lake=f)
    assert r.returncode == 2
    assert (
        r.stderr
        == f"midicorpus: error: --lake '{f}' is a file, not a lake folder; give a folder (a new one is created by ingest)\n"
    )
    assert f.read_text() == "not a lake\n"


# ------------------------------------------------------------------ sql
@pytest.mark.parametrize(
    "query, kind",
    [
        ("DROP VIEW pieces", "DROP"),
        ("CREATE TABLE x AS SELECT 1", "CREATE"),
        ("INSERT INTO pieces SELECT * FROM pieces", "INSERT"),
        ("SELECT 1; DELETE FROM pieces", "DELETE"),
        ("ATTACH 'other.duckdb'", "ATTACH"),
        ("COPY (SELECT 1) TO 'x.csv'", "COPY"),
    ],
    ids=lambda v: v if v.isupper() else None,
)
def test_sql_refuses_statements_that_change_things(query: str, kind: str, small_lake: Path, tmp_path: Path) -> None:
    r = cli("sql", query, lake=small_lake, cwd=tmp_path)
    assert r.returncode == 2 and r.stdout == ""
    first = query.split("; ")[-1]
    assert r.stderr == (
        f"midicorpus: error: sql is read-only: {first!r} is a {kind} statement; use SELECT, WITH, SHOW, DESCRIBE, "
        "SUMMARIZE or EXPLAIN (the lake changes only through midicorpus commands)\n"
    )
    assert not (tmp_path / "x.csv").exists() and not (tmp_path / "other.duckdb").exists()


@pytest.mark.parametrize("query", ["", "   ", "-- just a comment", ";"])
def test_sql_refuses_empty_sql(query: str, small_lake: Path) -> None:
    r = cli("sql", query, lake=small_lake)
    assert r.returncode == 2 and r.stderr.startswith("midicorpus: error: empty SQL") and r.stderr.count("\n") == 1


def test_sql_reads_as_before(small_lake: Path) -> None:
    r = cli("sql", "WITH p AS (SELECT * FROM pieces) SELECT count(*) AS n FROM p", "--format", "json", lake=small_lake)
    assert r.returncode == 0 and json.loads(r.stdout) == [{"n": 11}]
    r = cli("sql", "DESCRIBE features", "--format", "csv", lake=small_lake)
    assert r.returncode == 0 and "\nkey_mode," in r.stdout


def test_sql_help_names_the_views() -> None:
    r = subprocess.run([sys.executable, "-m", "corpus.cli", "sql", "--help"], capture_output=True, text=True, env=ENV)
    text = " ".join(r.stdout.split())
    for view in ("pieces", "rejects", "tracks", "features", "song_groups", "tokens", "snapshots", "snapshot_pieces"):
        assert f" {view}," in text or f" {view}." in text, view


def test_closed_pipe_ends_quietly(small_lake: Path) -> None:
    """`midicorpus sql ... | head -2`: no internal error, the status a shell reports for SIGPIPE."""
    p = subprocess.Popen(
        [sys.executable, "-m", "corpus.cli", "--lake", str(small_lake), "sql", "SELECT * FROM range(200000) t(i)"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
    )
    assert p.stdout is not None and p.stderr is not None
    p.stdout.readline()
    p.stdout.readline()
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141 and err == ""


def test_closed_pipe_through_a_shell(small_lake: Path) -> None:
    r = subprocess.run(
        [
            "bash",
            "-c",
            f"set -o pipefail; {sys.executable} -m corpus.cli --lake {small_lake} sql 'SELECT * FROM range(200000)' | head -2",
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert r.stderr == "" and len(r.stdout.splitlines()) == 2 and r.returncode == 141


# ------------------------------------------------------------------ sources that are not what they claim
def test_sources_refuse_folders_that_are_not_theirs(tmp_path: Path, data_dir: Path) -> None:
    lake = tmp_path / "lake"
    empty = tmp_path / "empty"
    empty.mkdir()
    magenta = data_dir / "midi" / "magenta"
    cases = [
        (
            ("ingest", "lpd", str(magenta)),
            f"midicorpus: error: '{magenta}' holds no Lakh Pianoroll Dataset .npz files (lpd / lpd_5 / lpd_17); for MIDI files use ingest lakh or ingest dir\n",
        ),
        (
            ("ingest", "lpd", str(empty)),
            f"midicorpus: error: '{empty}' holds no Lakh Pianoroll Dataset .npz files (lpd / lpd_5 / lpd_17); for MIDI files use ingest lakh or ingest dir\n",
        ),
        (
            ("ingest", "dir", str(empty)),
            f"midicorpus: error: '{empty}' holds no MIDI files (.mid/.midi/.kar/.rmi, or archives of them)\n",
        ),
        (
            ("ingest", "lakh", str(empty)),
            f"midicorpus: error: '{empty}' holds no MIDI files; expected the Lakh MIDI Dataset (lmd_full / lmd_matched / lmd_aligned)\n",
        ),
        (
            ("ingest", "lakh", str(magenta)),
            f"midicorpus: error: '{magenta}' does not look like the Lakh MIDI Dataset: expected lmd_full / lmd_matched / lmd_aligned "
            "with files named by their MD5 (first file found: 'magenta/english1.mid'); for any other MIDI folder use: midicorpus ingest dir PATH\n",
        ),
    ]
    for args, line in cases:
        r = cli(*args, lake=lake)
        assert (r.returncode, r.stderr) == (2, line), args
    assert not lake.exists()
    r = cli("--workers", "0", "ingest", "lakh", str(data_dir / "lakh" / "lmd_full"), lake=lake)
    assert r.returncode == 0 and "11 inputs = 11 ok" in r.stdout, r.stderr


def test_ingest_dir_help_lists_every_archive_kind() -> None:
    from corpus.sources.files import TAR_SUFFIXES, ZIP_SUFFIXES

    r = subprocess.run(
        [sys.executable, "-m", "corpus.cli", "ingest", "dir", "--help"], capture_output=True, text=True, env=ENV
    )
    text = "".join(r.stdout.split())
    for suffix in ZIP_SUFFIXES + TAR_SUFFIXES:
        assert suffix in text, suffix


def test_every_option_has_help() -> None:
    import argparse

    from corpus.cli import build_parser

    def walk(p: argparse.ArgumentParser, name: str):
        for act in p._actions:
            if isinstance(act, argparse._SubParsersAction):
                for sub_name, sub in act.choices.items():
                    yield from walk(sub, f"{name} {sub_name}")
            elif not isinstance(act, (argparse._HelpAction, argparse._VersionAction)):
                yield name, act

    missing = [f"{name} {act.dest}" for name, act in walk(build_parser(), "midicorpus") if not act.help]
    assert missing == []
    undefaulted = [
        f"{name} {act.option_strings[0]}"
        for name, act in walk(build_parser(), "midicorpus")
        if act.option_strings and act.default not in (None, False) and "default" not in (act.help or "")
    ]
    assert undefaulted == []


# ------------------------------------------------------------------ progress and re-runs
def test_progress_lines_when_stderr_is_a_file(tmp_path: Path, data_dir: Path) -> None:
    lake = tmp_path / "lake"
    with open(tmp_path / "err.log", "w") as err:
        t0 = time.monotonic()
        p = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "corpus.cli",
                "--lake",
                str(lake),
                "--workers",
                "1",
                "ingest",
                "dir",
                str(data_dir / "midi" / "magenta"),
            ],
            stdout=subprocess.PIPE,
            stderr=err,
            env=ENV,
            text=True,
        )
        first_line_after = None
        while p.poll() is None and first_line_after is None:
            if (tmp_path / "err.log").read_text():
                first_line_after = time.monotonic() - t0
            time.sleep(0.05)
        out, _ = p.communicate(timeout=300)
    lines = (tmp_path / "err.log").read_text().splitlines()
    assert p.returncode == 0, lines
    assert first_line_after is not None and first_line_after < 5.0  # the interpreter's start included
    assert lines[0].startswith("ingest dir: ") and " elapsed" in lines[0] and "\r" not in "".join(lines)
    assert any(re.match(r"ingest dir: \d+/11 files \(\d+%\) \[", line) for line in lines), (
        lines
    )  # the total, once known
    assert "11 inputs = 11 ok" in out


def test_progress_plain_lines_come_periodically() -> None:
    import io

    from corpus.progress import Progress

    class S:
        inputs = 0

        def line(self) -> str:
            return f"{self.inputs} inputs"

    buf = io.StringIO()
    p = Progress("ingest x", total=lambda s: 300, stream=buf, interval=0.3, delay=0.0)
    s = S()
    for i in range(12):
        s.inputs = i * 10
        p(s)
        time.sleep(0.1)
    time.sleep(0.7)  # nothing counted: the heartbeat still writes
    p.done()
    lines = buf.getvalue().splitlines()
    assert 4 <= len(lines) <= 9, lines
    assert lines[-1].startswith("ingest x: 110/300 files (37%) [") and " left, " in lines[-1] and "files/s" in lines[-1]


def test_music21_rerun_says_what_it_skipped_and_a_kill_keeps_committed_work(tmp_path: Path) -> None:
    """Commits by time during the slow conversion: an interrupted run keeps what it committed, the
    re-run converts only the rest and says how many were already there; no leaked semaphores."""
    lake = tmp_path / "lake"
    env = dict(ENV, MIDICORPUS_COMMIT_SECONDS="1")
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "corpus.cli",
            "--lake",
            str(lake),
            "--workers",
            "2",
            "ingest",
            "music21",
            "--limit",
            "40",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )

    def committed_pieces() -> bool:
        """A data transaction with pieces rows is in the lake's catalog (read while the run goes on)."""
        from corpus.lake import Lake, LakeError

        try:
            return any("pieces" in c["tables"] for c in Lake(lake).commits())
        except LakeError:  # the catalog is being created
            return False

    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and p.poll() is None and not committed_pieces():
        time.sleep(0.2)
    assert p.poll() is None, "the run ended before its first commit"
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "leaked semaphore" not in err and "Traceback" not in err
    r = cli("sql", "SELECT count(*) AS n FROM pieces", "--format", "json", lake=lake)
    kept = json.loads(r.stdout)[0]["n"]
    assert 0 < kept < 40
    r = cli("--workers", "2", "ingest", "music21", "--limit", "40", lake=lake)
    assert r.returncode == 0 and "leaked semaphore" not in r.stderr
    assert f"ingest music21: {40 - kept} inputs = {40 - kept} ok + 0 rejected + 0 duplicate" in r.stdout
    assert f"; {kept} more works already in the lake, not read again" in r.stdout
    r = cli("--workers", "0", "ingest", "music21", "--limit", "40", lake=lake)
    assert r.returncode == 0 and r.stdout.startswith("ingest music21: all 40 works already in the lake; nothing to do")


def test_readme_names_the_views_and_the_shell() -> None:
    readme = (REPO / "README.md").read_text()
    assert ". .venv/bin/activate" in readme and "midicorpus lake shell" in readme
    assert shutil.which("duckdb", path=str(Path(sys.executable).parent)), (
        "the DuckDB shell is installed with the project"
    )


# ------------------------------------------------------------------ progress of snapshot create and report
def on_a_terminal(*args: str, lake: Path) -> tuple[int, str, str]:
    """The command with stderr on a pseudo-terminal (120 columns), as a user at a shell sees it:
    exit status, stdout, and everything written to the terminal."""
    import fcntl
    import pty
    import struct
    import termios
    import threading

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the other end is closed
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        p = subprocess.run(
            [sys.executable, "-m", "corpus.cli", "--lake", str(lake), *args],
            stdout=subprocess.PIPE,
            stderr=slave,
            text=True,
            env=ENV,
            timeout=600,
        )
    finally:
        os.close(slave)
    reader.join(timeout=10)
    os.close(master)
    return p.returncode, p.stdout, b"".join(chunks).decode(errors="replace")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> tuple[Path, dict[str, str]]:
    """A lake ingested, curated and tokenized (remi) with --format json; the stdout of each step."""
    lake = tmp_path_factory.mktemp("pipeline") / "lake"
    out = {}
    for name, args in [
        ("ingest", ("ingest", "dir", str(data_dir / "midi" / "magenta"), "--source", "magenta")),
        ("curate", ("curate",)),
        ("tokenize", ("tokenize", "--scheme", "remi")),
    ]:
        r = cli("--workers", "0", *args, "--format", "json", lake=lake)
        assert r.returncode == 0, r.stderr
        out[name] = r.stdout
    return lake, out


def test_snapshot_create_shows_progress_on_a_terminal(pipeline: tuple[Path, dict[str, str]]) -> None:
    lake, _ = pipeline
    rc, out, term = on_a_terminal("snapshot", "create", "prog", "--scheme", "remi", lake=lake)
    assert rc == 0, term
    tokens = int(re.search(r"([\d,]+) tokens \(", out).group(1).replace(",", ""))
    from tqdm import tqdm

    total = tqdm.format_sizeof(tokens)  # the bar's unit_scale figure, e.g. 99.3k
    assert re.search(rf"snapshot create prog: +\d+%\|.*\| [\d.]+k?/{re.escape(total)} \[", term), term
    assert "tokens/s" in term and "writing train" in term


def test_report_shows_progress_on_a_terminal(pipeline: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    from reports import figures

    lake, _ = pipeline
    rc, out, term = on_a_terminal("report", "--out", str(tmp_path / "report"), lake=lake)
    assert rc == 0 and out == f"report: {tmp_path / 'report' / 'index.html'}\n", term
    assert re.search(rf"report: +\d+%\|.*\| \d+/{len(figures) + 1} \[", term), term


def test_snapshot_and_report_tell_their_steps(pipeline: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    """The library calls behind the bars: done reaches the total, through the named steps."""
    from corpus import snapshot
    from corpus.lake import Lake
    from corpus.progress import Step
    from reports import figures, write_report

    lake = Lake(pipeline[0])
    seen: list[Step] = []

    def record(st: Step) -> None:
        seen.append(Step(st.done, st.total, st.what))

    with lake.lock("test"):
        res = snapshot.create(lake, snapshot.SnapshotSpec(name="steps", scheme="remi", seed=3), progress=record)
    tokens = res.manifest["counts"]["tokens"]
    assert tokens > 0 and seen[0] == Step(0, None, "selecting pieces")
    steps = [s.what for s in seen]
    # the attribution and licences are written before the tokens (the selection is freed first), then
    # one step per split, train first
    assert steps.index("writing the attribution") < steps.index("writing train")
    splits = [w for w in dict.fromkeys(steps) if w.startswith("writing ") and not w.startswith("writing the ")]
    assert splits[:1] == ["writing train"]
    assert [s.done for s in seen] == sorted(s.done for s in seen) and seen[-1] == Step(
        tokens, tokens, "registering in the lake"
    )
    seen.clear()
    write_report(lake, tmp_path / "report", progress=record)
    assert seen[0] == Step(0, len(figures) + 1, "opening the lake")
    assert seen[-1] == Step(len(figures) + 1, len(figures) + 1, "writing the page")
    assert {s.what for s in seen} >= {f.name for f in figures}


# ------------------------------------------------------------------ --format json for scripts
def test_summaries_as_json(pipeline: tuple[Path, dict[str, str]], data_dir: Path) -> None:
    lake, out = pipeline
    for name, text in out.items():
        assert text.count("\n") == 1, (name, text)  # one JSON object on one line
    ingest = json.loads(out["ingest"])
    assert ingest == {
        "command": "ingest magenta",
        "inputs": 11,
        "ok": 11,
        "rejected": 0,
        "duplicate": 0,
        "unchanged": 0,
        "reasons": {},
        "seconds": ingest["seconds"],
        "already_in_lake": 0,
    }
    curate = json.loads(out["curate"])
    assert (curate["command"], curate["analysed"], curate["failed"], curate["pieces"]) == ("curate", 11, 0, 11)
    tok = json.loads(out["tokenize"])
    assert tok["command"] == "tokenize" and [(s["scheme"], s["pieces"], s["rejected"]) for s in tok["schemes"]] == [
        ("remi", 11, 0)
    ]
    r = cli("--workers", "0", "ingest", "dir", str(data_dir / "midi" / "magenta"), "--source", "magenta", lake=lake)
    assert r.stdout.startswith("ingest magenta: 11 inputs = 0 ok + 0 rejected + 0 duplicate + 11 unchanged")  # text


def test_snapshot_list_and_create_as_json(pipeline: tuple[Path, dict[str, str]]) -> None:
    lake, _ = pipeline
    r = cli("snapshot", "create", "js", "--scheme", "remi", "--seed", "7", "--format", "json", lake=lake)
    assert r.returncode == 0, r.stderr
    made = json.loads(r.stdout)
    assert made["name"] == "js" and made["created"] is True and made["pieces"] == 11
    assert sum(made["splits"][sp]["tokens"] for sp in ("train", "valid", "test")) == made["tokens"] > 0
    r = cli("snapshot", "create", "js", "--scheme", "remi", "--seed", "7", lake=lake)
    assert r.stdout == (
        f"snapshot js@{made['version']} already there (same content): 11 pieces, {made['sequences']} sequences, "
        f"{made['tokens']:,} tokens (train {made['splits']['train']['tokens']:,}, valid "
        f"{made['splits']['valid']['tokens']:,}, test {made['splits']['test']['tokens']:,}) at {made['path']}\n"
    )
    r = cli("snapshot", "list", "--format", "json", lake=lake)
    rows = [row for row in json.loads(r.stdout) if row["name"] == "js"]
    assert [(x["version"], x["pieces"], x["tokens"], x["path"]) for x in rows] == [
        (made["version"], 11, made["tokens"], made["path"])
    ]
    r = cli("snapshot", "list", lake=lake)
    assert r.stdout.startswith("name ") and made["version"] in r.stdout  # the table, by default


def test_snapshot_list_json_when_there_are_none(small_lake: Path) -> None:
    r = cli("snapshot", "list", "--format", "json", lake=small_lake)
    assert (r.returncode, r.stdout) == (0, "[]\n")
    assert cli("snapshot", "list", lake=small_lake).stdout == "no snapshots\n"


def test_lake_versions_as_json(pipeline: tuple[Path, dict[str, str]]) -> None:
    lake, _ = pipeline
    r = cli("lake", "versions", "--format", "json", "--last", "100", lake=lake)
    assert r.returncode == 0, r.stderr
    versions = json.loads(r.stdout)
    commands = [v["command"] for v in versions]
    assert "ingest magenta" in commands and "curate" in commands and "tokenize" in commands
    ingest = versions[commands.index("ingest magenta")]
    assert ingest["rows_written"]["pieces"] == 11 and isinstance(ingest["version"], int)
    r = cli("lake", "versions", "--last", "1", lake=lake)
    assert r.stdout.splitlines()[0].split() == ["version", "committed_at", "(UTC)", "command", "rows", "written"]
    assert len(r.stdout.splitlines()) == 3
    r = cli("lake", "versions", "--format", "json", "--last", "1", lake=lake)
    assert json.loads(r.stdout) == versions[-1:]


# ------------------------------------------------------------------ SHOW TABLES
def test_every_view_show_tables_lists_is_in_the_readme(small_lake: Path) -> None:
    """The internal views (``*_t``, ``*_latest``) cannot leave SHOW TABLES without a rename across
    the code base (DuckDB's SHOW TABLES lists every schema on the search path, temp included), so
    the README names each one, in ``midicorpus sql`` and in ``lake shell``."""
    r = cli("sql", "SHOW TABLES", "--format", "json", lake=small_lake)
    names = [row["name"] for row in json.loads(r.stdout)]
    assert "pieces_t" in names and "dedup_latest" in names and "features" in names
    r = cli("lake", "shell", "-c", "SHOW TABLES", lake=small_lake)
    assert r.returncode == 0, r.stderr
    in_shell = [n for n in re.findall(r"│ (\w+) +│", r.stdout) if n not in ("name", "varchar")]
    assert set(names) <= set(in_shell) and "midicorpus_schema" in in_shell
    readme = (REPO / "README.md").read_text()
    assert [n for n in in_shell if f"`{n}`" not in readme] == []
