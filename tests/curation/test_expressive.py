"""Performed or quantized (nomml-v1): MAESTRO performances against notation-made files, and the
measure on hand-built scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import symusic

from corpus.curation import expressive
from corpus.curation.expressive import EXPRESSIVE_LEVEL, MIN_ONSETS, OFF_GRID, decide, measure, onset_levels

TPQ = 480


def _sets(data_dir: Path) -> dict[str, list[Path]]:
    sets = expressive.reference_sets(data_dir)
    assert len(sets["expressive"]) == 10 and len(sets["quantized"]) >= 70, {k: len(v) for k, v in sets.items()}
    return sets


def test_every_maestro_excerpt_is_expressive_and_every_notated_file_quantized(data_dir: Path) -> None:
    for want, paths in _sets(data_dir).items():
        for p in paths:
            piece, tracks = expressive.piece_expressive(symusic.Score(str(p)))
            assert piece["expressive"] == want, (p.name, piece)
            decided = [t["expressive"] for t in tracks.values() if t["expressive"] is not None]
            assert decided and set(decided) == {want}, (p.name, tracks)
            if want == "expressive":
                assert piece["onset_metric_level"] >= EXPRESSIVE_LEVEL and piece["onset_grid_dev"] > 0.1
            else:
                assert piece["onset_metric_level"] <= 4 and piece["onset_grid_dev"] == 0.0


def test_check_reports_the_confusion_table(data_dir: Path) -> None:
    got = expressive.check(data_dir)
    n = 10 + len(_sets(data_dir)["quantized"])
    assert got["pieces"] == {"expressive->expressive": 10, "quantized->quantized": n - 10}
    assert got["wrong"] == []
    assert f"accuracy {n}/{n} = 100.0%" in expressive.confusion_table(got["pieces"])


def test_levels_on_exact_grids() -> None:
    q = TPQ
    onsets = np.array([0, q, q // 2, q // 3, q // 4, q // 6, q // 8, q // 16, q // 32, 7])
    assert onset_levels(onsets, TPQ).tolist() == [0, 0, 1, 2, 3, 4, 5, 7, 9, OFF_GRID]
    assert onset_levels(np.array([6, 8, 1]), 384).tolist() == [11, 10, OFF_GRID]  # 384/64, 384/48
    # positions are exact fractions: at tpq 100 a 16th is 25 ticks, and 33 ticks is no triplet
    assert onset_levels(np.array([75, 50, 33]), 100).tolist() == [3, 1, OFF_GRID]


def _score(onsets: np.ndarray) -> symusic.Score:
    s = symusic.Score(TPQ)
    t = symusic.Track(program=0)
    for i, on in enumerate(onsets):
        t.notes.append(symusic.Note(int(on), TPQ // 4, 60 + i % 12, 80))
    s.tracks.append(t)
    return s


def test_jitter_turns_a_sequenced_line_expressive() -> None:
    grid = np.arange(64) * (TPQ // 4)  # sixteenths
    piece, tracks = expressive.piece_expressive(_score(grid))
    assert piece["expressive"] == "quantized" and piece["onset_metric_level"] <= 3
    rng = np.random.default_rng(0)
    played = grid + rng.integers(-20, 21, len(grid))  # +-20 ticks: +-21 ms at 120 bpm
    played = np.maximum(played, 0)
    piece, tracks = expressive.piece_expressive(_score(played))
    assert piece["expressive"] == "expressive" and tracks[0]["expressive"] == "expressive"
    assert piece["onset_grid_dev"] > 0.1


def test_too_few_onsets_decide_nothing() -> None:
    m = measure(np.array([1, 7, 13]), TPQ)
    assert m["n_onsets"] == 3 and m["onset_metric_level"] == OFF_GRID
    assert decide(m["onset_metric_level"], m["n_onsets"]) is None
    assert decide(float(OFF_GRID), MIN_ONSETS) == "expressive"
    assert decide(float(EXPRESSIVE_LEVEL - 1), MIN_ONSETS) == "quantized"
    assert measure(np.zeros(0, np.int64), TPQ)["onset_metric_level"] is None


@pytest.mark.parametrize("name", ["Maestro_1.mid", "Maestro_10.mid"])
def test_chords_count_once(data_dir: Path, name: str) -> None:
    score = symusic.Score(str(data_dir / "midi" / "miditok" / name))
    onsets = score.tracks[0].notes.numpy()["time"]
    assert measure(onsets, score.tpq)["n_onsets"] == len(np.unique(onsets)) < len(onsets)
