"""Track roles: what each track of a piece does (melody, bass, chords, drums, other).

Features, per track with notes (never its name: the names are the labels we measure against):

* ``is_drum`` (MIDI channel 10): drums, confidence 1.
* ``program`` (General MIDI): the bass family (32-39) points to bass.
* register: the median pitch.
* polyphony: notes per distinct onset, and ``share_poly`` (the share of sounding time with more
  than one note, from :mod:`corpus.curation.texture`).
* note density: distinct onsets per quarter over the piece's span.
* ``skyline_share``: the share of the piece's chords whose top note the track plays
  (:mod:`corpus.curation.songs`, stored in ``track_signatures``).

Rule ``ROLE_RULE`` (``roles-v1``), per piece:

1. drum tracks are ``drums``.
2. ``chords``: pitched tracks that sound several notes at once (notes per onset >= 1.6, or more
   than 55 % of their sounding time polyphonic); confidence grows with both.
3. ``bass``: of the others, tracks whose median pitch is below ``BASS_PITCH`` (C3 + 3 = 51) or whose
   program is a bass (32-39) with a median below 60, and which are the lowest pitched track or
   within a fifth of it; confidence from how low and whether the program agrees.
4. ``melody``: at most one track per piece: of the remaining tracks (programs 112-127,
   percussive and effects, excluded) the one with the highest melody score, when that score
   reaches ``MIN_MELODY_SCORE``; confidence is 0.5 plus the margin over the runner-up. The score:
   the mean of its skyline share and its *line top share* (the skyline among the candidate lines
   alone, so chord tracks above the tune and the bass below it do not hide it), times 1 for a
   single line and down to 0.25 with chords, times 0 at C3 and below rising to 1 at C4, plus
   0.1 x its density (onsets per quarter, capped at 1).
5. Everything else is ``other`` (counter-melodies, fills, doubled lines).

The melody candidates also include a track decided ``chords`` when no single-line track qualifies
and that track holds the top of the texture (a piano part that carries the tune); then it is the
melody. Confidences are in [0, 1]; a threshold can be applied later in SQL (``role_confidence``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import numpy as np

if TYPE_CHECKING:
    import symusic

ROLE_RULE: Final = "roles-v1"
ROLES: Final = ("melody", "bass", "chords", "drums", "other")
BASS_PITCH: Final = 51
CHORD_NOTES_PER_ONSET: Final = 1.6
CHORD_SHARE_POLY: Final = 0.55
MIN_MELODY_SCORE: Final = 0.2
PERCUSSIVE_PROGRAM: Final = 112  # GM 112-119 percussive, 120-127 sound effects: never the melody

Role = Literal["melody", "bass", "chords", "drums", "other"]


def _clip(x: float) -> float:
    return float(min(1.0, max(0.0, x)))


def track_features(
    score: symusic.Score, track_tex: list[dict[str, Any]], skyline: Mapping[int, float]
) -> dict[int, dict[str, Any]]:
    """Per track index with notes: the features the rule reads (see the module docstring)."""
    tpq = max(1, int(score.tpq))
    span_q = max(1.0, float(score.end()) / tpq) if len(score.tracks) else 1.0
    tex = {int(t["index"]): t for t in track_tex}
    out: dict[int, dict[str, Any]] = {}
    for i, track in enumerate(score.tracks):
        if len(track.notes) == 0:
            continue
        a = track.notes.numpy()
        n_onsets = len(np.unique(a["time"]))
        out[i] = {
            "is_drum": bool(track.is_drum),
            "program": int(track.program),
            "n_notes": len(a["time"]),
            "pitch_median": float(np.median(a["pitch"])),
            "notes_per_onset": len(a["time"]) / max(1, n_onsets),
            "share_poly": float(tex.get(i, {}).get("share_poly") or 0.0),
            "density": n_onsets / span_q,
            "skyline_share": float(skyline.get(i, 0.0)),
        }
    return out


def _chordiness(f: Mapping[str, Any]) -> float:
    return max(
        _clip((f["notes_per_onset"] - 1.2) / (2 * (CHORD_NOTES_PER_ONSET - 1.2))),
        _clip(f["share_poly"] / (2 * CHORD_SHARE_POLY)),
    )


def _is_chords(f: Mapping[str, Any]) -> bool:
    return f["notes_per_onset"] >= CHORD_NOTES_PER_ONSET or f["share_poly"] > CHORD_SHARE_POLY


def _melody_score(f: Mapping[str, Any]) -> float:
    if f["program"] >= PERCUSSIVE_PROGRAM:
        return 0.0
    single = 1.0 - _clip((f["notes_per_onset"] - 1.05) / 0.6)
    low = _clip((f["pitch_median"] - 48) / 12)  # 0 at C3 and below, 1 from C4
    top = 0.5 * f["skyline_share"] + 0.5 * f.get("line_top_share", f["skyline_share"])
    return top * (0.25 + 0.75 * single) * low + 0.1 * _clip(f["density"])


def assign_roles(features: Mapping[int, Mapping[str, Any]]) -> dict[int, tuple[Role, float]]:
    """``roles-v1``: {track index: (role, confidence)} for the tracks in ``features``."""
    out: dict[int, tuple[Role, float]] = {}
    pitched = {i: f for i, f in features.items() if not f["is_drum"]}
    for i, f in features.items():
        if f["is_drum"]:
            out[i] = ("drums", 1.0)
    for i, f in pitched.items():
        if _is_chords(f):
            out[i] = ("chords", round(0.5 + 0.5 * _chordiness(f), 4))
    rest = {i: f for i, f in pitched.items() if i not in out}
    if rest:
        lowest = min(f["pitch_median"] for f in pitched.values())
        for i, f in rest.items():
            bass_prog = 32 <= f["program"] <= 39
            low = f["pitch_median"] < BASS_PITCH or (bass_prog and f["pitch_median"] < 60)
            if low and f["pitch_median"] <= lowest + 7 and len(pitched) > 1:
                conf = 0.5 + 0.25 * _clip((BASS_PITCH + 3 - f["pitch_median"]) / 12) + 0.25 * bass_prog
                out[i] = ("bass", round(_clip(conf), 4))
    cands = {i: _melody_score(f) for i, f in pitched.items() if i not in out}
    if not cands:  # a piano part carrying the tune: the chord track on top of the texture
        cands = {i: _melody_score(f) for i, f in pitched.items() if out.get(i, ("",))[0] == "chords"}
    if cands:
        ranked = sorted(cands.items(), key=lambda kv: (-kv[1], kv[0]))
        best, score = ranked[0]
        runner = ranked[1][1] if len(ranked) > 1 else 0.0
        if score >= MIN_MELODY_SCORE:
            out[best] = ("melody", round(_clip(0.5 + (score - runner)), 4))
    for i in pitched:
        if i not in out:
            out[i] = ("other", round(0.5 + 0.5 * (1 - _clip(cands.get(i, 0.0) / max(MIN_MELODY_SCORE, 1e-9))), 4))
    return out


def line_top_shares(score: symusic.Score, features: Mapping[int, Mapping[str, Any]]) -> dict[int, float]:
    """Per melody candidate (a pitched track the rule does not make drums, chords or bass, with a
    program below 112), the share of the candidates' chords whose top note it plays: the skyline
    among the single lines alone, so chord tracks above the tune and a bass below it do not hide it."""
    from corpus.curation import songs

    first = assign_roles(features)
    lines = {
        i
        for i, f in features.items()
        if first[i][0] in ("melody", "other") and f["program"] < PERCUSSIVE_PROGRAM and not f["is_drum"]
    }
    return songs._skyline_shares([(i, t) for i, t in songs._track_tables(score) if i in lines])


def piece_roles(
    score: symusic.Score, track_tex: list[dict[str, Any]], skyline: Mapping[int, float]
) -> dict[int, tuple[Role, float]]:
    """{track index: (role, confidence)} for every track with notes of ``score``."""
    features = track_features(score, track_tex, skyline)
    for i, share in line_top_shares(score, features).items():
        features[i]["line_top_share"] = share
    return assign_roles(features)


# ------------------------------------------------------------------ evaluation against track names
# Only for measuring the rule: the names are never a feature. A name maps to a role when it
# says unambiguously what the track does; other names are not counted.
_NAME_ROLES: Final = {
    "melody": "melody",
    "vocal": "melody",
    "vocals": "melody",
    "lead vocal": "melody",
    "lead voca": "melody",
    "chant": "melody",
    "bass": "bass",
    "basse": "bass",
    "fing bass": "bass",
    "bass guitar": "bass",
    "drums": "drums",
    "drum": "drums",
    "chord": "chords",
    "chords": "chords",
    "bridge": "other",  # POP909: the secondary melody / instrumental line
}


def role_from_name(name: str, pop909: bool = False) -> str | None:
    """The role a track's name states (None when it does not say). In POP909 arrangements the
    ``PIANO`` track is the accompaniment (chords)."""
    n = " ".join(name.replace("\x00", "").strip().lower().split())
    if pop909 and n == "piano":
        return "chords"
    return _NAME_ROLES.get(n)


def score_roles(score: symusic.Score) -> dict[int, tuple[Role, float]]:
    """Roles of a score computed as curate computes them (texture and skyline shares included)."""
    from corpus.curation import songs, texture

    _, track_tex = texture.piece_texture(score)
    return piece_roles(score, track_tex, songs._skyline_shares(songs._track_tables(score)))


def name_confusion(paths: list[Any], pop909: bool = False) -> dict[tuple[str, str], int]:
    """{(role the name states, role decided): tracks} over the named tracks of the files ``paths``."""
    import symusic

    counts: dict[tuple[str, str], int] = {}
    for p in paths:
        score = symusic.Score(str(p))
        got = score_roles(score)
        for i, track in enumerate(score.tracks):
            want = role_from_name(track.name, pop909)
            if want is None or i not in got:
                continue
            key = (want, got[i][0])
            counts[key] = counts.get(key, 0) + 1
    return counts


def confusion_table(counts: Mapping[tuple[str, str], int], labels: tuple[str, ...] = ROLES) -> str:
    """A plain-text confusion table (rows: the role the name states; columns: decided), with accuracy."""
    w = max(len(x) for x in labels) + 2
    lines = ["name \\ decided".ljust(16) + "".join(x.rjust(w) for x in labels)]
    for want in labels:
        row = [counts.get((want, got), 0) for got in labels]
        if sum(row):
            lines.append(want.ljust(16) + "".join(str(n).rjust(w) for n in row))
    total = sum(counts.values())
    right = sum(n for (a, b), n in counts.items() if a == b)
    lines.append(f"accuracy {right}/{total} = {right / total:.1%}" if total else "accuracy: no labelled tracks")
    return "\n".join(lines)


def reference_sets(data_dir: Path, arrangements_dir: Path | None = None) -> dict[str, list[Path]]:
    """Files whose track names say what the tracks do: ``pop909`` (the original POP909 file of
    each song in the arrangements folder: MELODY / BRIDGE / PIANO) and ``named`` (Nottingham
    Melody / Chord, the Lakh files, miditok's pop songs, miditoolkit's 1390)."""
    data_dir = Path(data_dir)
    out: dict[str, list[Path]] = {
        "named": sorted((data_dir / "midi" / "muspy" / "Nottingham_recon").glob("*.mid"))
        + sorted((data_dir / "lakh" / "lmd_full").glob("*/*.mid"))
        + sorted((data_dir / "midi" / "miditok").glob("*.mid"))
        + sorted((data_dir / "midi" / "miditoolkit").glob("*.mid"))
    }
    if arrangements_dir is not None and Path(arrangements_dir).is_dir():
        out["pop909"] = sorted(Path(arrangements_dir).glob("*/[0-9]*.mid"))
    return out


def check(data_dir: Path, arrangements_dir: Path | None = None) -> dict[str, Any]:
    """Per reference set: the confusion counts ("stated->decided") and the accuracy."""
    out: dict[str, Any] = {"rule": ROLE_RULE}
    for name, paths in reference_sets(data_dir, arrangements_dir).items():
        counts = name_confusion(paths, pop909=name == "pop909")
        total = sum(counts.values())
        right = sum(n for (a, b), n in counts.items() if a == b)
        out[name] = {
            "files": len(paths),
            "tracks": total,
            "accuracy": round(right / total, 4) if total else None,
            "confusion": {f"{a}->{b}": n for (a, b), n in sorted(counts.items())},
        }
    return out
