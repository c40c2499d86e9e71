"""The HTML report over a small lake of real files, drawn by headless Chromium.

Chromium is Debian's ``chromium`` package (CI installs it with apt); without it the
browser checks skip with a message and the static checks still run.
"""

from __future__ import annotations

import html
import shutil
import struct
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from corpus.curate import curate
from corpus.engine import Engine
from corpus.ingest import IngestConfig, ingest
from corpus.lake import Lake
from corpus.snapshot import SnapshotSpec, create
from corpus.sources.folder import DirSource
from corpus.tokenize.stage import tokenize
from reports import ReportError, figures, write_report
from reports.report import QUERIES

MARKS = {"rect", "path", "circle", "line", "polygon", "polyline"}


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Lake:
    """Magenta and Lakh files, the corrupt set (rejects), Mutopia (Bach), Lakh-derived
    melodies, and a mirror of the Mutopia files (byte-identical: duplicates)."""
    lake = Lake(tmp_path_factory.mktemp("report") / "lake")
    sources = [
        ("magenta", data_dir / "midi" / "magenta", "Apache-2.0"),
        ("lakh", data_dir / "lakh" / "lmd_full", "CC-BY-4.0"),
        ("corrupt", data_dir / "corrupt", None),
        ("mutopia", data_dir / "mutopia", "CC-BY-SA-4.0"),
        ("melodies", data_dir / "lakh_derived", "MIT"),
        ("mirror", data_dir / "mutopia-site" / "site_mirror" / "ftp" / "BachJS" / "BWV988", "CC-BY-SA-4.0"),
    ]
    with lake.lock(), Engine(workers=0) as e:
        for name, path, lic in sources:
            ingest(lake, DirSource(path, name=name, license=lic), e, IngestConfig())
        curate(lake, e)
        tokenize(lake, e, ["remi"])
        create(lake, SnapshotSpec(name="all", scheme="remi"))
    return lake


@pytest.fixture(scope="module")
def report(lake: Lake, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_report(lake, tmp_path_factory.mktemp("out") / "report")


class FigureScan(HTMLParser):
    """Per ``data-figure`` element: its attributes, whether it holds an <svg>, how many marks."""

    def __init__(self) -> None:
        super().__init__()
        self.figures: dict[str, dict[str, object]] = {}
        self.stack: list[str] = []
        self.current: str | None = None
        self.depth = 0
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "script":
            self.scripts += 1
        if tag == "figure" and a.get("data-figure"):
            self.current = a["data-figure"]
            self.depth = 0
            self.figures[self.current] = {"attrs": a, "svg": 0, "marks": 0, "in_svg": False}
        if self.current is None:
            return
        fig = self.figures[self.current]
        if tag == "figure":
            self.depth += 1
        if tag == "svg":
            fig["svg"] = int(fig["svg"]) + 1  # type: ignore[call-overload]
            fig["in_svg"] = True
        elif tag in MARKS and fig["in_svg"]:
            fig["marks"] = int(fig["marks"]) + 1  # type: ignore[call-overload]

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag in {"svg", "figure"}:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if self.current is None:
            return
        if tag == "svg":
            self.figures[self.current]["in_svg"] = False
        if tag == "figure":
            self.depth -= 1
            if self.depth == 0:
                self.current = None


def scan(text: str) -> FigureScan:
    p = FigureScan()
    p.feed(text)
    return p


CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium not installed (CI: apt-get install -y chromium); the browser checks need it")
    return exe


def run_chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", head[16:24])


# ------------------------------------------------------------------------- browser checks
def test_chromium_draws_every_figure(report: Path, tmp_path: Path) -> None:
    """The DOM Chromium built from the page has every figure, each with an SVG that draws marks."""
    res = run_chromium(["--dump-dom", report.as_uri()], tmp_path / "profile")
    assert res.returncode == 0, res.stderr[-2000:]
    dom = scan(res.stdout)
    assert list(dom.figures) == [f.name for f in figures]
    for name, fig in dom.figures.items():
        assert fig["svg"] == 1, name
        assert int(fig["marks"]) >= 3, (name, fig["marks"])  # type: ignore[call-overload]
        attrs = fig["attrs"]
        assert attrs["data-state"] == "ok", (name, attrs)  # type: ignore[index]
    assert dom.scripts == 0
    assert "Uncaught" not in res.stderr


def test_chromium_screenshot(report: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    res = run_chromium([f"--screenshot={shot}", "--window-size=1280,4000", report.as_uri()], tmp_path / "profile")
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    assert png_size(shot) == (1280, 4000)
    assert shot.stat().st_size > 100_000  # drawn charts, not a blank page
    print(f"screenshot: {shot}")


# ------------------------------------------------------------------------- the page itself
def test_every_figure_shows_its_query(report: Path) -> None:
    text = report.read_text()
    dom = scan(text)
    assert {f.name for f in figures} == set(dom.figures)
    for f in figures:
        assert f.sql_path.parent == QUERIES and f.sql_path.is_file()
        body = f.sql().rstrip()
        shown = text.split(f'data-figure="{f.name}"', 1)[1].split("</figure>", 1)[0]
        plain = html.unescape(shown.replace('<span class="c">', "").replace("</span>", ""))
        assert body in plain, f.name
        assert f"reports/{f.name}.sql" in shown


def test_figures_answer_from_the_lake(lake: Lake, report: Path) -> None:
    """Spot checks of the numbers against the views."""
    import json

    data = json.loads((report.parent / "figures.json").read_text())
    con = lake.connect()
    try:
        (n_features,) = con.execute("SELECT count(*) FROM features").fetchone()
        (n_rejects,) = con.execute("SELECT count(*) FROM rejects").fetchone()
        (n_dups,) = con.execute("SELECT count(*) FROM pieces WHERE is_duplicate AND status = 'ok'").fetchone()
    finally:
        con.close()
    assert all(v["error"] is None for v in data.values())
    assert sum(r["pieces"] for r in data["keys"]["rows"]) == n_features
    assert sum(r["pieces"] for r in data["dedup"]["rows"]) == n_features
    assert sum(r["n"] for r in data["rejects"]["rows"]) == n_rejects
    assert sum(r["duplicate"] for r in data["sources"]["rows"]) == n_dups > 0  # the mirrored Mutopia files
    reasons = {r["reason"] for r in data["rejects"]["rows"]}
    assert {"truncated", "not_midi", "midi_format_2", "smpte_division"} <= reasons
    total = next(r for r in data["texture"]["rows"] if r["source"] is None)
    assert total["pieces"] == n_features and total["monophonic"] > 0 and total["polyphonic"] > 0
    assert [r["scheme"] for r in data["tokens"]["rows"]] == ["remi"]
    assert [r["name"] for r in data["snapshots"]["rows"]] == ["all"]
    # performed or quantized: Mutopia's LilyPond files are all quantized
    ex = {r["source"]: r for r in data["expressive"]["rows"]}
    assert ex[None]["pieces"] == n_features
    assert ex["mutopia"]["quantized"] == ex["mutopia"]["pieces"] > 0 and ex["mutopia"]["expressive"] == 0
    # track roles: every track with notes counted once; Lakh's multitrack songs have drums and bass
    ro = {r["source"]: r for r in data["roles"]["rows"]}
    con = lake.connect()
    try:
        (n_tracks,) = con.execute("SELECT count(*) FROM tracks WHERE n_notes > 0").fetchone()
    finally:
        con.close()
    assert ro[None]["tracks"] == n_tracks and ro[None]["undecided"] == 0
    assert ro["lakh"]["drums"] > 0 and ro["lakh"]["bass"] > 0 and ro["lakh"]["melody"] > 0
    # chord qualities: every labelled beat counted once, under its quality
    con = lake.connect()
    try:
        (n_beats,) = con.execute("SELECT sum(n_beats) FROM chords").fetchone()
        prog = dict(
            con.execute(
                "SELECT chord_progression, count(*) FROM features WHERE chord_progression IS NOT NULL GROUP BY 1"
            ).fetchall()
        )
    finally:
        con.close()
    cq = {r["quality"]: r for r in data["chord_qualities"]["rows"]}
    assert sum(r["beats"] for r in cq.values()) == n_beats > 0
    assert cq["maj"]["beats"] > 0 and cq["min"]["beats"] > 0
    assert {r["progression"]: r["pieces"] for r in data["progressions"]["rows"]}.items() <= prog.items()
    assert len(data["progressions"]["rows"]) == min(20, len(prog)) > 0


def test_empty_lake_draws_every_figure_empty(tmp_path: Path) -> None:
    index = write_report(Lake(tmp_path / "no-lake"), tmp_path / "out")
    dom = scan(index.read_text())
    assert list(dom.figures) == [f.name for f in figures]
    for name, fig in dom.figures.items():
        assert fig["attrs"]["data-state"] == "empty", name  # type: ignore[index]
        assert fig["svg"] == 1 and int(fig["marks"]) >= 1, name  # type: ignore[call-overload]
    assert "no data" in index.read_text()


def test_write_is_atomic_and_replaces_only_reports(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "no-lake")
    out = tmp_path / "out"
    first = write_report(lake, out)
    (out / "stale.txt").write_text("from an older report")
    second = write_report(lake, out)
    assert first == second == out / "index.html"
    assert not (out / "stale.txt").exists()  # the whole directory was swapped
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp or old directories left
    # a directory that is not a report is never replaced
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(ReportError, match="not a report"):
        write_report(lake, other)
    assert (other / "notes.txt").read_text() == "keep me"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ReportError, match="is a file"):
        write_report(lake, tmp_path / "file")


def test_page_is_self_contained(report: Path) -> None:
    text = report.read_text()
    for needle in ('src="http', "src='http", 'href="http', "url(http", "@import", "<script", "<link "):
        assert needle not in text, needle
