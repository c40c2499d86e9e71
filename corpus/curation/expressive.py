"""Performed or quantized: how far a track's note onsets sit from the metrical grid.

Measure (``onset_metric_level``, after GigaMIDI's NOMML, "note onset median metric level",
Lee et al. 2025): every onset gets the *metric level* of the coarsest grid it lies on exactly,
the grids being the quarter note divided by ``DIVISORS`` = 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48,
64 (levels 0..11: duple and triplet subdivisions down to a 1/64 of a quarter, a 256th note);
an onset on none of them gets ``OFF_GRID`` = 12. An onset at tick ``t`` lies on grid ``d`` when
``t * d`` is a multiple of the ticks per quarter (exact rational position, so it also works when
``tpq / d`` is not a whole number of ticks). The track's measure is the median level over its
onsets (one per distinct onset tick, so a chord counts once). Notation software and step
sequencers put nearly every onset on a coarse grid (median level 0..4: a quarter to a sixteenth);
a recorded performance puts most onsets between grid points, so the median reaches ``OFF_GRID``.

Beside it, ``onset_grid_dev``: the median distance of the onsets from the nearest point of the
1/48-quarter grid (the union of the sixteenth and sixteenth-triplet grids and their halves),
as a fraction of that grid's step (0 = all on the grid, about 0.25 for onsets spread uniformly).
It says *how far* off the grid a track is, where the level says *which* grid it keeps.

Rule (``EXPRESSIVE_RULE``, ``nomml-v1``): a track with at least ``MIN_ONSETS`` onsets is
``expressive`` when its median level is ``>= EXPRESSIVE_LEVEL`` (11: median onset on no grid
coarser than 1/64 quarter), else ``quantized``; fewer onsets decide nothing (NULL). A piece is
decided the same way over the onsets of all its tracks merged (pitched and drums).

How this differs from GigaMIDI's NOMML: the paper measures the same median metric level with
its own level list and ticks normalised to the file's resolution and picks the threshold on its
ground truth; here the levels are the exact-rational grids above, chords count once, short
tracks are left undecided, and the threshold was checked on the shared data (MAESTRO excerpts
performed, Mutopia LilyPond and Nottingham ABC files quantized: ``midicorpus bench`` prints the
confusion table). The paper's two other heuristics (velocity ratio DNVR, onset deviation ratio
DNODR) are not used; ``onset_grid_dev`` plays DNODR's part as a kept measure.

Known limit (shared with NOMML): the grid is the file's own quarter note. A file written from
seconds at a nominal tempo (pretty_midi writes 220 ticks per quarter at 60 or 120 bpm) keeps
its music's grid only when the music has that tempo; otherwise its quantized onsets fall between
the file's grid points and it reads ``expressive`` (35 of the 37 MeloForm melodies in the shared
data, written that way from Lakh). Files at 48 ticks per quarter or less are always
``quantized``: every tick lies on the 1/48 grid.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import numpy as np

if TYPE_CHECKING:
    import symusic

EXPRESSIVE_RULE: Final = "nomml-v1: median onset metric level >= 11 (grids 1..64 per quarter), >= 8 onsets"
DIVISORS: Final = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
OFF_GRID: Final = len(DIVISORS)
EXPRESSIVE_LEVEL: Final = 11
MIN_ONSETS: Final = 8
DEV_DIVISOR: Final = 48

Decision = Literal["expressive", "quantized"]


def onset_levels(onsets: np.ndarray, tpq: int) -> np.ndarray:
    """Metric level of each onset tick: the index in ``DIVISORS`` of the coarsest grid it lies on,
    ``OFF_GRID`` when none."""
    t = np.asarray(onsets, dtype=np.int64)
    level = np.full(len(t), OFF_GRID, dtype=np.int64)
    for i in range(len(DIVISORS) - 1, -1, -1):  # finest first, so the coarsest grid wins
        level[(t * DIVISORS[i]) % tpq == 0] = i
    return level


def grid_deviation(onsets: np.ndarray, tpq: int) -> float:
    """Median distance of the onsets from the 1/``DEV_DIVISOR``-quarter grid, in grid steps (0..0.5)."""
    pos = np.asarray(onsets, dtype=np.float64) * DEV_DIVISOR / tpq
    return float(np.median(np.abs(pos - np.round(pos))))


def measure(onsets: np.ndarray, tpq: int) -> dict[str, Any]:
    """``onset_metric_level``, ``onset_grid_dev`` and ``n_onsets`` of a set of onset ticks (made distinct)."""
    t = np.unique(np.asarray(onsets, dtype=np.int64))
    if len(t) == 0 or tpq <= 0:
        return {"n_onsets": int(len(t)), "onset_metric_level": None, "onset_grid_dev": None}
    return {
        "n_onsets": int(len(t)),
        "onset_metric_level": float(np.median(onset_levels(t, tpq))),
        "onset_grid_dev": round(grid_deviation(t, tpq), 6),
    }


def decide(level: float | None, n_onsets: int) -> Decision | None:
    """The ``nomml-v1`` decision from the stored measures (None: too few onsets to say)."""
    if level is None or n_onsets < MIN_ONSETS:
        return None
    return "expressive" if level >= EXPRESSIVE_LEVEL else "quantized"


def piece_expressive(score: symusic.Score) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
    """(piece measures and decision, {track index: measures and decision}) for every track with notes."""
    tpq = int(score.tpq)
    tracks: dict[int, dict[str, Any]] = {}
    all_onsets: list[np.ndarray] = []
    for i, track in enumerate(score.tracks):
        if len(track.notes) == 0:
            continue
        onsets = track.notes.numpy()["time"]
        all_onsets.append(onsets)
        m = measure(onsets, tpq)
        tracks[i] = {**m, "expressive": decide(m["onset_metric_level"], m["n_onsets"])}
    piece = measure(np.concatenate(all_onsets) if all_onsets else np.zeros(0, np.int64), tpq)
    piece["expressive"] = decide(piece["onset_metric_level"], piece["n_onsets"])
    return piece, tracks


# ------------------------------------------------------------------ the check on the shared data
def reference_sets(data_dir: Path) -> dict[Decision, list[Path]]:
    """Files whose making is known, by the decision they should get: MAESTRO excerpts (recorded
    piano performances) ``expressive``; Mutopia (LilyPond) and Nottingham (ABC) files ``quantized``."""
    data_dir = Path(data_dir)
    return {
        "expressive": sorted((data_dir / "midi" / "miditok").glob("Maestro_*.mid")),
        "quantized": sorted((data_dir / "mutopia").rglob("*.mid"))
        + sorted((data_dir / "midi" / "muspy" / "Nottingham_recon").glob("*.mid")),
    }


def check(data_dir: Path) -> dict[str, Any]:
    """Confusion counts per piece and per track (tracks the rule decides) on :func:`reference_sets`,
    and the pieces decided otherwise than their set says."""
    import symusic

    pieces: dict[str, int] = {}
    tracks: dict[str, int] = {}
    wrong: list[str] = []
    for want, paths in reference_sets(data_dir).items():
        for p in paths:
            piece, per_track = piece_expressive(symusic.Score(str(p)))
            k = f"{want}->{piece['expressive']}"
            pieces[k] = pieces.get(k, 0) + 1
            if piece["expressive"] != want:
                wrong.append(str(p.relative_to(data_dir)))
            for t in per_track.values():
                if t["expressive"] is not None:
                    k = f"{want}->{t['expressive']}"
                    tracks[k] = tracks.get(k, 0) + 1
    return {"rule": EXPRESSIVE_RULE, "pieces": pieces, "tracks": tracks, "wrong": wrong}


def confusion_table(counts: dict[str, int]) -> str:
    labels = ("expressive", "quantized")
    lines = ["made as \\ decided".ljust(18) + "".join(x.rjust(12) for x in (*labels, "undecided"))]
    for want in labels:
        row = [counts.get(f"{want}->{got}", 0) for got in (*labels, "None")]
        lines.append(want.ljust(18) + "".join(str(n).rjust(12) for n in row))
    total = sum(counts.values())
    right = sum(counts.get(f"{x}->{x}", 0) for x in labels)
    lines.append(f"accuracy {right}/{total} = {right / total:.1%}" if total else "accuracy: no files")
    return "\n".join(lines)
