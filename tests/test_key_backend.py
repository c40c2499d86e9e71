"""curate's music21 key backend (music21's own analyze('key'), ~2.5 s per file: three small files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from corpus.curate import analyse_batch, analyse_piece, curate
from corpus.curation.key import estimate_key_music21
from corpus.curation.key_evidence import KEY_METHOD
from corpus.engine import Engine
from corpus.ingest import IngestConfig, ingest
from corpus.lake import Lake
from corpus.sources.base import SourceItem

FILES = ("python-midi/mary.mid", "magenta/english2.mid", "muspy/multitrack.mid")
DRUMS = "tonejs-midi/beat.mid"


def test_music21_backend_agrees_with_estimate_key_music21(data_dir: Path) -> None:
    for rel in FILES:
        data = (data_dir / "midi" / rel).read_bytes()
        row = analyse_piece("x", data, key_backend="music21")["row"]
        want = estimate_key_music21(data)
        assert row["key_backend"] == "music21"
        got = (row["key_music21_tonic"], row["key_music21_tonic_pc"], row["key_music21_mode"])
        assert got == (want.tonic, want.tonic_pc, want.mode), rel
        assert row["key_music21_correlation"] == pytest.approx(want.correlation)
        assert row["key_music21_confidence"] == pytest.approx(want.confidence)
        assert row["key_profile"] == KEY_METHOD  # the default key is ours whichever backend
        ours = analyse_piece("x", data)["row"]
        assert ours["key_backend"] == "ours"
        # everything but the music21 columns is the same whichever backend
        same = {k for k in ours if not k.startswith("key_music21_") and k != "key_backend"}
        assert {k: row[k] for k in same} == {k: ours[k] for k in same}


def test_no_key_no_backend(data_dir: Path) -> None:
    row = analyse_piece("x", (data_dir / "midi" / DRUMS).read_bytes(), key_backend="music21")["row"]
    assert row["texture"] == "drums_only" and row["key_mode"] is None and row["key_backend"] is None
    assert row["key_music21_mode"] is None


def test_unknown_backend() -> None:
    with pytest.raises(ValueError):
        analyse_piece("x", b"MThd", key_backend="madmom")
    # in a batch, a bad backend would fail every piece: curate refuses it up front
    assert analyse_batch([], key_backend="music21") == []


def test_music21_failure_falls_back_to_ours(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from corpus.curation import key

    def boom(*a: object, **k: object) -> None:
        raise RuntimeError("music21 refused")

    monkeypatch.setattr(key, "estimate_key_music21", boom)
    data = (data_dir / "midi" / FILES[0]).read_bytes()
    out = analyse_piece("x", data, key_backend="music21")
    assert out["row"]["key_backend"] == "ours" and "music21 refused" in out["key_fallback"]
    assert out["row"] == analyse_piece("x", data)["row"]


def test_curate_with_music21_backend(data_dir: Path, tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    items = [SourceItem(source="t", uri=rel, data=(data_dir / "midi" / rel).read_bytes(), name=rel) for rel in FILES]
    with lake.lock("test"), Engine(workers=0) as e:
        ingest(lake, items, e, IngestConfig())
        with pytest.raises(ValueError):
            curate(lake, e, key_backend="Music21")
        s = curate(lake, e, key_backend="music21")
    assert s.analysed == 3 and s.key_fallbacks == 0 and s.key_backend == "music21"
    con = lake.connect()
    try:
        rows = con.execute(
            "SELECT p.name, f.key_backend, f.key_music21_tonic, f.key_music21_mode, f.key_music21_correlation "
            "FROM pieces p JOIN features f USING (piece_id) ORDER BY 1"
        ).fetchall()
    finally:
        con.close()
    assert len(rows) == 3
    for name, backend, tonic, mode, corr in rows:
        want = estimate_key_music21((data_dir / "midi" / name).read_bytes())
        assert (backend, tonic, mode) == ("music21", want.tonic, want.mode)
        assert corr == pytest.approx(want.correlation)
