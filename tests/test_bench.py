"""The benchmark runs end to end on a small real folder and reports every key (not timed)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
RATIOS = (
    "parse_overhead_vs_symusic",
    "key_speedup_vs_music21",
    "key_agreement_music21",
    "tokenize_overhead_vs_miditok",
    "tokenize_scaling_2_workers",
    "fastpath_speedup_vs_miditok",
    "loader_tokens_per_s",
    "peak_rss_mb_per_worker",
    "lakh_projection_hours",
)


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not DATA.is_dir():
        pytest.skip(f"real test data not found at {DATA} (shared/ must sit beside the repository)")
    root = tmp_path_factory.mktemp("bench-files")
    for sub in ("midi/magenta", "lakh"):
        shutil.copytree(DATA / sub, root / sub)
    return root


@pytest.mark.timeout(600)
def test_run_bench_reports_every_key(small_folder: Path, tmp_path: Path) -> None:
    from corpus.bench import run_bench

    lines: list[str] = []
    out = tmp_path / "bench.json"
    r = run_bench(
        small_folder,
        out,
        workers=2,
        key_files=4,
        repeat=1,
        fastpath_schemes=("remi",),
        kept_schemes=("remi", "structured", "pertok"),
        echo=lines.append,
    )
    on_disk = json.loads(out.read_text())
    assert on_disk.keys() == r.keys()
    for key in (*RATIOS, "fastpath_identical_ids", "missing"):
        assert key in on_disk, key
    missing = on_disk["missing"]
    for key in RATIOS:
        v = on_disk[key]
        if v is None:  # only for a stage whose module is not there yet, and then it says so
            assert missing, key
            continue
        assert isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0, (key, v)
    assert isinstance(on_disk["fastpath_identical_ids"], bool)
    per = on_disk["fastpath_per_scheme"]["remi"]
    assert per["fastpath_identical_ids"] is True and per["fastpath_speedup_vs_miditok"] > 1
    assert "fastpath remi" in "\n".join(lines)
    # kept share per scheme: every parsed piece is kept or rejected with a reason; the lost ones are listed
    kept = on_disk["stages"]["kept"]
    parsed = on_disk["stages"]["parse"]["ok"]
    for scheme in ("remi", "structured", "pertok"):
        v = kept["per_scheme"][scheme]
        assert v["parsed"] == parsed and v["kept"] + sum(v["reasons"].values()) == parsed, (scheme, v)
        assert on_disk["kept_share_per_scheme"][scheme] == round(v["kept"] / parsed, 4)
        assert len(kept["lost"][scheme]) == parsed - v["kept"]
        assert f"kept {scheme}" in "\n".join(lines)
    assert kept["per_scheme"]["pertok"]["kept_vs_remi"] >= 0.9
    assert kept["per_scheme"]["structured"]["reasons"].get("lossy_encoding", 0) >= 1  # magenta + lakh lose some
    assert all("TimeShift" in x["detail"] for x in kept["lost"]["structured"] if x["reason"] == "lossy_encoding")
    bpe = on_disk["stages"]["bpe"]
    assert bpe["identical_ids"] is True and bpe["base_tokens"] > 0 and on_disk["bpe_batched_tokens_per_s"] > 0
    assert 0 <= on_disk["key_agreement_music21"] <= 1
    # no arrangements or Mutopia files in this folder: only the chorales and madrigals of music21's corpus
    assert {r["set"] for r in on_disk["stages"]["key_accuracy"]["rows"]} == {"chorales", "monteverdi"}
    assert on_disk["files"] == 22 and on_disk["stages"]["pipeline"]["ingest"]["inputs"] == 22
    table = "\n".join(lines)
    assert "parse+validate+facts" in table and "Lakh" in table


def test_bad_input(tmp_path: Path) -> None:
    from corpus.bench import run_bench, run_scale

    with pytest.raises(ValueError, match="no .mid"):
        run_bench(tmp_path, None)
    with pytest.raises(ValueError, match="n_list"):
        run_scale(n_list=(0,), src_dir=tmp_path)


@pytest.mark.timeout(600)
def test_lakehouse_table_runs_every_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``bench --lakehouse N`` on a tiny lake: every command of the table runs as its own process and
    exits 0, the delta's curate decides only what the new pieces touch, the no-op curate says so."""
    if not DATA.is_dir():
        pytest.skip(f"real test data not found at {DATA}")
    from corpus.bench_lakehouse import compare, run_lakehouse

    lines: list[str] = []
    out = tmp_path / "lh.json"
    r = run_lakehouse(24, 4, src_dir=DATA, workers=1, work_dir=tmp_path / "w", out=out, echo=lines.append)
    rows = {row["step"]: row for row in r["rows"]}
    assert len(rows) == 11 and all(row["rc"] == 0 for row in rows.values()), r["rows"]
    assert all(row["wall_s"] > 0 and row["driver_peak_rss_mb"] > 0 and row["driver_cpu_s"] > 0 for row in rows.values())
    assert "pieces decided again" in rows["nightly delta: curate"]["last_line"]
    assert rows["curate again with nothing new"]["last_line"].startswith("curate: nothing new:")
    assert json.loads(out.read_text())["rows"] == r["rows"]
    table = "\n".join(lines)
    assert "| nightly delta: curate |" in table and "| snapshot create |" in table
    ratios = compare(r, r).splitlines()
    assert len(ratios) == 2 + 11 and all("| 1.00x | 1.00x |" in ln for ln in ratios[2:])
    # one more night on the same lake (python -m corpus.bench_lakehouse LAKE DIR): real files this time
    from corpus.bench_lakehouse import main as nightly

    assert nightly([str(tmp_path / "w" / "lake"), str(DATA / "lakh_derived"), "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "| nightly delta: curate |" in printed and "pieces decided again" in printed
    assert "curate again with nothing new: curate: nothing new:" in printed


@pytest.mark.timeout(600)
def test_bench_key_accuracy_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``bench --key-accuracy``: exact and MIREX per set and half for the three estimates."""
    from corpus.cli import main

    if not (DATA.parent / "arrangements").is_dir():
        pytest.skip("../shared/arrangements not found")
    out = tmp_path / "key.json"
    assert main(["bench", "--key-accuracy", "--files", str(DATA), "--out", str(out)]) == 0
    acc = json.loads(out.read_text())["key_accuracy"]
    assert acc["methods"] == ["default", "music21", "krumhansl"]
    sets = {r["set"] for r in acc["rows"]}
    assert sets == {"pop909", "pop909_versions", "pop909_main", "goldberg", "chorales", "monteverdi"}
    for r in acc["rows"]:
        assert {r["half"]} <= {"tune", "held", "all"} and r["n"] > 0
        for m in acc["methods"]:
            assert 0 <= r[f"{m}_exact"] <= r[f"{m}_mirex"] <= 1, r
    by = {(r["set"], r["half"]): r for r in acc["rows"]}
    assert by[("pop909", "all")]["n"] == by[("pop909", "tune")]["n"] + by[("pop909", "held")]["n"]
    # the default beats music21's estimate on the pop songs and the Goldberg Variations
    for name in ("pop909", "goldberg"):
        assert by[(name, "all")]["default_exact"] > by[(name, "all")]["music21_exact"]
    # song-level paired counts, and the weights chosen on the tuning halves are the default's
    for r in acc["rows"]:
        songs = r["songs_default_better"] + r["songs_music21_better"]
        assert 0 <= songs <= r["n"], r
    assert acc["selection"]["is_default"] and acc["selection"]["family"] in acc["selection"]["families"]
    printed = capsys.readouterr().out
    assert "key accuracy vs human labels" in printed and "pop909_versions" in printed
    assert "= DEFAULT_WEIGHTS" in printed


def test_bench_prints_the_curation_checks(data_dir: Path, arrangements_dir: Path) -> None:
    """``midicorpus bench`` prints the expressive/quantized and the role confusion tables."""
    from corpus.bench_curation import run_curation

    lines: list[str] = []
    r = run_curation(data_dir, arrangements_dir, echo=lines.append)
    text = "\n".join(lines)
    assert "performed or quantized (nomml-v1" in text and "made as \\ decided" in text
    assert "track roles (roles-v1) against the track names, pop909 (150 files)" in text
    assert r["expressive"]["pieces"]["expressive->expressive"] == 10 and not r["expressive"]["wrong"]
    assert r["roles"]["pop909"]["accuracy"] >= 0.85 and r["roles"]["named"]["accuracy"] >= 0.95
