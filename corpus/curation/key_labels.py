"""Labelled key sets, the MIREX key score, and the accuracy of the key estimates on them.

Six sets, each split once into a tuning half and a held-out half (fixed, by id parity, never
by result), with labels that are independent of what the estimators look at:

* ``pop909``: ``../shared/arrangements/NNN/NNN.mid`` with the human key labels annotated from
  the *audio* (``key_audio.txt``); songs whose labels name one key only. Tuning half: even NNN.
* ``pop909_versions``: the earlier arrangements of the same songs (``versions/NNN-vK.mid``), same
  labels, the half of their song (a song and its arrangements are always on one side).
* ``pop909_main``: the songs with several labelled keys of which one covers at least two thirds
  of the labelled time (most modulate for the last chorus), labelled with that main key; final
  arrangements, half by song number as above.
* ``goldberg``: the 30 Mutopia files of Bach's Goldberg Variations (``mutopia/ftp/BachJS/BWV988``),
  variation number from the RDF title ("Goldberg Variations - 15"); the label is the published
  key of the work, G major, except variations 15, 21 and 25 in G minor (BWV 988). Tuning half:
  even variation numbers.
* ``chorales``: the Bach chorales of music21's corpus that have a human roman-numeral analysis
  (``bach/choraleAnalyses/riemenschneiderNNN.rntxt``, analyst named in the file); the label is
  the analysis' opening key, the MIDI is music21's conversion of the chorale's score (as
  ``ingest music21`` makes it). Tuning half: even Riemenschneider numbers.
* ``monteverdi``: the madrigals of music21's corpus with a human roman-numeral analysis
  (``monteverdi/madrigal.B.N.rntxt``, several analysts); the label is the first key the analysis
  names, the MIDI music21's conversion of ``madrigal.B.N.mxl``. Tuning half: even N.

The weights of the default estimate are chosen on the tuning halves only
(:func:`select_weights`); ``midicorpus bench --key-accuracy`` reports every half apart.

MIREX weighting follows ``mir_eval.key.weighted_score``: 1.0 same key, 0.5 same mode with the
estimate a perfect fifth *above* the label, 0.3 relative major/minor, 0.2 parallel, else 0.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np

from corpus.curation.key import KeyEstimate, Mode, estimate_key_from_weights, note_weights, pc_name_to_pc

Half = Literal["tune", "held"]
SETS: Final = ("pop909", "pop909_versions", "pop909_main", "goldberg", "chorales", "monteverdi")
GOLDBERG_MINOR: Final = frozenset({15, 21, 25})  # BWV 988: these variations are in G minor


@dataclass(frozen=True, slots=True)
class LabelledPiece:
    set: str
    id: str
    half: Half
    tonic_pc: int
    mode: Mode
    load: Callable[[], bytes]  # the MIDI bytes (music21 conversion is done only when asked)

    @property
    def label(self) -> str:
        return f"{self.tonic_pc}:{self.mode}"


def mirex_score(est_pc: int, est_mode: str, ref_pc: int, ref_mode: str) -> float:
    """MIREX key score of an estimate against a label (see the module docstring)."""
    d = (est_pc - ref_pc) % 12
    if est_mode == ref_mode:
        return 1.0 if d == 0 else 0.5 if d == 7 else 0.0
    if ref_mode == "major" and d == 9:  # estimate is the relative minor
        return 0.3
    if ref_mode == "minor" and d == 3:  # estimate is the relative major
        return 0.3
    return 0.2 if d == 0 else 0.0


def parse_label(text: str) -> tuple[int, Mode]:
    """``'Gb:maj'`` / ``'a:min'`` -> (pitch class, mode); ValueError on anything else."""
    m = re.fullmatch(r"\s*([A-Ga-g][#b]*)\s*:\s*(maj|min|major|minor)\s*", text)
    if not m:
        raise ValueError(f"not a key label: {text!r}; expected Tonic:maj or Tonic:min")
    mode: Mode = "major" if m.group(2).startswith("maj") else "minor"
    return pc_name_to_pc(m.group(1)), mode


def _reader(path: Path) -> Callable[[], bytes]:
    return lambda: path.read_bytes()


MAIN_KEY_SHARE: Final = 2 / 3  # pop909_main: the main key covers at least this share of the labelled time


def _key_segments(lab: Path) -> list[tuple[float, tuple[int, Mode]]]:
    """``key_audio.txt`` rows as (seconds, key)."""
    out = []
    for line in lab.read_text().splitlines():
        if line.strip():
            start, end, key = line.split("\t")[-3:]
            out.append((max(0.0, float(end) - float(start)), parse_label(key)))
    return out


def pop909_set(arrangements: str | Path, *, versions: bool = False, main: bool = False) -> list[LabelledPiece]:
    """Songs with one key in ``key_audio.txt`` (see the module docstring).

    ``versions=True``: instead the earlier arrangements of those songs (``versions/NNN-vK.mid``,
    same melody and key, accompaniment arranged again), as the set ``pop909_versions`` with the
    half of their song. ``main=True``: instead the songs with *several* labelled keys of which one
    covers at least :data:`MAIN_KEY_SHARE` of the labelled time (typically a modulation for the
    last chorus), labelled with that main key, as the set ``pop909_main`` (final arrangements).
    """
    out: list[LabelledPiece] = []
    for d in sorted(Path(arrangements).iterdir()):
        lab, mid = d / "key_audio.txt", d / f"{d.name}.mid"
        if not (d.name.isdigit() and lab.is_file() and mid.is_file()):
            continue
        segments = _key_segments(lab)
        keys = {k for _, k in segments}
        half: Half = "tune" if int(d.name) % 2 == 0 else "held"
        if main:
            if len(keys) < 2:
                continue
            total = sum(t for t, _ in segments)
            share = {k: sum(t for t, kk in segments if kk == k) / total for k in keys}
            top = max(share, key=lambda k: share[k])
            if total > 0 and share[top] >= MAIN_KEY_SHARE:
                out.append(LabelledPiece("pop909_main", d.name, half, *top, _reader(mid)))
            continue
        if len(keys) != 1:
            continue
        pc, mode = keys.pop()
        if not versions:
            out.append(LabelledPiece("pop909", d.name, half, pc, mode, _reader(mid)))
            continue
        for v in sorted((d / "versions").glob(f"{d.name}-v*.mid")):
            out.append(LabelledPiece("pop909_versions", v.stem, half, pc, mode, _reader(v)))
    return out


def goldberg_set(data: str | Path) -> list[LabelledPiece]:
    """The Goldberg Variations of ``mutopia/ftp`` (see the module docstring)."""
    out: list[LabelledPiece] = []
    for rdf in sorted((Path(data) / "mutopia" / "ftp" / "BachJS" / "BWV988").rglob("*.rdf")):
        m = re.search(r"<mp:title>\s*Goldberg Variations\s*-\s*(\d+)\s*</mp:title>", rdf.read_text(errors="replace"))
        mid = rdf.with_suffix(".mid")
        if not m or not mid.is_file():
            continue
        n = int(m.group(1))
        mode: Mode = "minor" if n in GOLDBERG_MINOR else "major"
        out.append(LabelledPiece("goldberg", f"var{n:02d}", "tune" if n % 2 == 0 else "held", 7, mode, _reader(mid)))
    return sorted(out, key=lambda p: p.id)


def _chorale_midi(path: Path) -> Callable[[], bytes]:
    def load() -> bytes:
        from music21 import converter
        from music21.midi import translate

        return translate.music21ObjectToMidiFile(converter.parse(path)).writestr()

    return load


def _first_key(text: str) -> tuple[int, Mode] | None:
    """The first key an rntxt analysis names in a measure line (``m4 b2 F: I6`` -> F major)."""
    m = re.search(r"^m\d+[a-z]?\b[^\n]*?\s([A-Ga-g][#b-]*):", text, re.M)
    if not m:
        return None
    tonic = m.group(1)
    mode: Mode = "major" if tonic[0].isupper() else "minor"
    return pc_name_to_pc(tonic[0].upper() + tonic[1:]), mode


def chorale_set() -> list[LabelledPiece]:
    """Bach chorales with a human roman-numeral analysis in music21's corpus."""
    from music21 import corpus

    out: list[LabelledPiece] = []
    for path in sorted(corpus.getPaths(fileExtensions=("rntxt",))):
        p = Path(str(path))
        m = re.fullmatch(r"riemenschneider(\d+)\.rntxt", p.name)
        if not m or p.parent.name != "choraleAnalyses":
            continue
        text = p.read_text(errors="replace")
        bwv = re.search(r"^BWV:\s*(\S+)", text, re.M)
        first = re.search(r"^m[01]\b.*?\s([A-Ga-g][#b-]*):", text, re.M)
        if not bwv or not first:
            continue
        score_file = next(iter(sorted(p.parent.parent.glob(f"bwv{bwv.group(1)}.*"))), None)
        if score_file is None or score_file.suffix not in (".mxl", ".xml", ".krn"):
            continue
        tonic = first.group(1)
        mode: Mode = "major" if tonic[0].isupper() else "minor"
        n = int(m.group(1))
        out.append(
            LabelledPiece(
                "chorales",
                f"riemenschneider{n:03d}",
                "tune" if n % 2 == 0 else "held",
                pc_name_to_pc(tonic[0].upper() + tonic[1:]),
                mode,
                _chorale_midi(score_file),
            )
        )
    return out


def monteverdi_set() -> list[LabelledPiece]:
    """Monteverdi madrigals (books 3-5) with a human roman-numeral analysis in music21's corpus.

    The label is the first key the analysis names (an analysis of a madrigal whose opening bars
    are monophonic starts later, at the first key it names); the MIDI is music21's conversion of
    the madrigal's score. Tuning half: even madrigal numbers within the book.
    """
    from music21 import corpus

    out: list[LabelledPiece] = []
    for path in sorted(corpus.getPaths(fileExtensions=("rntxt",))):
        p = Path(str(path))
        m = re.fullmatch(r"madrigal\.(\d+)\.(\d+)\.rntxt", p.name)
        score_file = p.with_suffix(".mxl")
        if not m or p.parent.name != "monteverdi" or not score_file.is_file():
            continue
        key = _first_key(p.read_text(errors="replace"))
        if key is None:
            continue
        book, n = int(m.group(1)), int(m.group(2))
        out.append(
            LabelledPiece(
                "monteverdi",
                f"madrigal{book}.{n:02d}",
                "tune" if n % 2 == 0 else "held",
                *key,
                _chorale_midi(score_file),
            )
        )
    return sorted(out, key=lambda x: x.id)


def labelled_sets(
    data: str | Path | None, arrangements: str | Path | None, *, chorales: bool = True
) -> list[LabelledPiece]:
    """Every labelled piece that can be built here (a missing folder gives no pieces)."""
    out: list[LabelledPiece] = []
    if arrangements is not None and Path(arrangements).is_dir():
        out += pop909_set(arrangements)
        out += pop909_set(arrangements, versions=True)
        out += pop909_set(arrangements, main=True)
    if data is not None and Path(data).is_dir():
        out += goldberg_set(data)
    if chorales:
        out += chorale_set()
        out += monteverdi_set()
    return out


# ---------------------------------------------------------------------------------------------
# estimates and accuracy

METHODS: Final = ("default", "music21", "krumhansl")


@dataclass(slots=True)
class Scored:
    """One labelled piece with its evidence and the estimates of each method."""

    piece: LabelledPiece
    evidence: Any  # key_evidence.KeyEvidence
    estimates: dict[str, KeyEstimate | None]


def score_pieces(pieces: Iterable[LabelledPiece], skipped: list[tuple[str, str]] | None = None) -> list[Scored]:
    """Parse each piece once; the default, music21-compatible (ours) and Krumhansl estimates.

    A piece that cannot be loaded (music21 refuses a few chorales' repeats) is left out and, when
    ``skipped`` is given, appended to it as ``(set/id, reason)``.
    """
    import symusic

    from corpus.curation.key_evidence import key_evidence, key_from_evidence

    out: list[Scored] = []
    for piece in pieces:
        try:
            score = symusic.Score.from_midi(piece.load())
        except Exception as exc:  # noqa: BLE001 - recorded with its reason, the piece is left out
            if skipped is not None:
                skipped.append((f"{piece.set}/{piece.id}", f"{type(exc).__name__}: {exc}"))
            continue
        p, _, w = note_weights(score)
        ev = key_evidence(score, weights_cache=(p, w))
        out.append(
            Scored(
                piece,
                ev,
                {
                    "default": key_from_evidence(ev) if ev is not None else None,
                    "music21": estimate_key_from_weights(p, w, "aarden"),
                    "krumhansl": estimate_key_from_weights(p, w, "krumhansl"),
                },
            )
        )
    return out


def accuracy(scored: Sequence[Scored], method: str) -> dict[str, Any]:
    """``n``, ``exact`` and ``mirex`` (means) of ``method`` over ``scored`` (no key scores 0)."""
    if not scored:
        return {"n": 0, "exact": None, "mirex": None}
    ex, mx = [], []
    for s in scored:
        est = s.estimates.get(method)
        if est is None:
            ex.append(0.0)
            mx.append(0.0)
            continue
        ex.append(float((est.tonic_pc, est.mode) == (s.piece.tonic_pc, s.piece.mode)))
        mx.append(mirex_score(est.tonic_pc, est.mode, s.piece.tonic_pc, s.piece.mode))
    return {"n": len(scored), "exact": float(np.mean(ex)), "mirex": float(np.mean(mx))}


def _paired_songs(scored: Sequence[Scored]) -> tuple[int, int]:
    """Songs on which the default's exact accuracy (mean over the song's pieces) beats music21's,
    and the reverse (a POP909 song's arrangements are one song: they are not independent)."""
    by_song: dict[str, list[float]] = {}
    for s in scored:
        d, m = (s.estimates.get(k) for k in ("default", "music21"))
        ref = (s.piece.tonic_pc, s.piece.mode)
        diff = float(d is not None and (d.tonic_pc, d.mode) == ref) - float(
            m is not None and (m.tonic_pc, m.mode) == ref
        )
        by_song.setdefault(song_of(s.piece), []).append(diff)
    means = [float(np.mean(v)) for v in by_song.values()]
    return sum(x > 0 for x in means), sum(x < 0 for x in means)


def accuracy_table(scored: Sequence[Scored], methods: Sequence[str] = METHODS) -> list[dict[str, Any]]:
    """One row per (set, half) and per set (half ``all``): n, then exact and mirex per method."""
    rows: list[dict[str, Any]] = []
    for name in sorted({s.piece.set for s in scored}):
        for half in ("tune", "held", "all"):
            part = [s for s in scored if s.piece.set == name and (half == "all" or s.piece.half == half)]
            row: dict[str, Any] = {"set": name, "half": half, "n": len(part)}
            for m in methods:
                acc = accuracy(part, m)
                row[f"{m}_exact"] = acc["exact"]
                row[f"{m}_mirex"] = acc["mirex"]
            if "default" in methods and "music21" in methods:
                row["songs_default_better"], row["songs_music21_better"] = _paired_songs(part)
            rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# choosing the weights (tuning halves only)

TONIC_CUES: Final = ("final_bass", "final_chord", "first_bass")
CHORD_ROWS: Final = ("chord_tonic", "chord_phrase", "chord_diatonic", "cadence")
_STEP: Final = tuple(round(0.01 * i, 2) for i in range(31))  # 0 .. 0.30
_CHORD_STEP: Final = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)  # weights of chord evidence
_TONIC: Final = (TONIC_CUES, _STEP)
_DIATONIC: Final = (("chord_diatonic",), _CHORD_STEP)


def _profile(row: str) -> tuple[tuple[tuple[str, ...], tuple[float, ...]], ...]:
    """A histogram with another profile in place of Aarden-Essen (one choice, not a weight)."""
    return ((("hist",), (0.0,)), ((row,), (1.0,)))


# Candidate families of weights: each tuple of evidence names shares one weight; the values each
# weight may take. ``hist`` is 1 unless a family sets it (a profile swap: ``_profile``), evidence
# not named is 0. ``each`` is evidence-v1's grid. The issue-18 families: chord evidence (one row,
# or the four sharing a weight, with or without the tonic cues), the section key covering the most
# time, other profiles (Temperley-Kostka-Payne, Bellman-Budge, Albrecht-Shanahan) and a
# bass-weighted histogram in place of Aarden-Essen, and the best of these combined.
FAMILIES: Final[dict[str, tuple[tuple[tuple[str, ...], tuple[float, ...]], ...]]] = {
    "tonic": (_TONIC,),
    "tonic+declared": (_TONIC, (("declared",), (0.0, 0.05, 0.1, 0.15, 0.2, 0.3))),
    "tonic+declared+sections": (
        (TONIC_CUES, _STEP[::2]),
        (("declared",), (0.0, 0.05, 0.1, 0.2, 0.3)),
        (("sections",), (0.0, 0.1, 0.2, 0.3)),
    ),
    "each": (
        (("bass",), (0.0, 0.05, 0.1, 0.2)),
        (("final_bass",), (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)),
        (("final_chord",), (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)),
        (("first_bass",), (0.0, 0.05, 0.1)),
        (("declared",), (0.0, 0.1, 0.3)),
        (("sections",), (0.0, 0.1, 0.2, 0.3)),
    ),
    "tonic+cadence": (_TONIC, (("cadence",), _CHORD_STEP)),
    "tonic+chord_tonic": (_TONIC, (("chord_tonic",), _CHORD_STEP)),
    "tonic+chord_phrase": (_TONIC, (("chord_phrase",), _CHORD_STEP)),
    "tonic+chord_diatonic": (_TONIC, _DIATONIC),
    "tonic+chords": (_TONIC, (CHORD_ROWS, _CHORD_STEP)),
    "tonic+sections_top": (_TONIC, (("sections_top",), _CHORD_STEP)),
    "cadence": ((("cadence",), (*_CHORD_STEP, 0.7, 1.0)),),
    "chord_tonic": ((("chord_tonic",), (*_CHORD_STEP, 0.7, 1.0)),),
    "chords": ((CHORD_ROWS, _CHORD_STEP),),
    "temperley+tonic": (*_profile("hist_temperley"), _TONIC),
    "bellman+tonic": (*_profile("hist_bellman"), _TONIC),
    "albrecht+tonic": (*_profile("hist_albrecht"), _TONIC),
    "bassw+tonic": (*_profile("hist_bassw"), _TONIC),
    "tonic+chord_diatonic+cadence": (_TONIC, _DIATONIC, (("cadence",), _CHORD_STEP)),
    "tonic+chord_diatonic+sections": (_TONIC, _DIATONIC, (("sections",), (0.0, 0.1, 0.2, 0.3))),
    "temperley+tonic+chord_diatonic": (*_profile("hist_temperley"), _TONIC, _DIATONIC),
    "bellman+tonic+chord_diatonic": (*_profile("hist_bellman"), _TONIC, _DIATONIC),
    "albrecht+tonic+chord_diatonic": (*_profile("hist_albrecht"), _TONIC, _DIATONIC),
}


def n_free(family: str) -> int:
    """The free parameters of a family: its weights with more than one value, plus one for a
    fixed choice made on the data (a profile in place of Aarden-Essen)."""
    spec = FAMILIES[family]
    return sum(len(v) > 1 for _, v in spec) + int(any(len(v) == 1 for _, v in spec))


CV_FOLDS: Final = 5
CV_SEED: Final = 0


def tune_group(set_name: str) -> str:
    """The group a set counts in when weights are chosen: every POP909 set is one group, ``pop``."""
    return "pop" if set_name.startswith("pop909") else set_name


def song_of(piece: LabelledPiece) -> str:
    """The song a piece belongs to (a POP909 song's final arrangement and its versions: one song)."""
    return f"pop/{piece.id.split('-')[0]}" if piece.set.startswith("pop909") else f"{piece.set}/{piece.id}"


def _mirex_table() -> np.ndarray:
    modes = ("major", "minor")
    return np.array(
        [[mirex_score(e % 12, modes[e // 12], r % 12, modes[r // 12]) for r in range(24)] for e in range(24)]
    )


def family_combos(family: str) -> np.ndarray:
    """Every weight vector of ``family`` (rows in ``EVIDENCE`` order)."""
    import itertools

    from corpus.curation.key_evidence import EVIDENCE

    if family not in FAMILIES:
        raise ValueError(f"unknown weight family {family!r}; expected one of {', '.join(FAMILIES)}")
    spec = FAMILIES[family]
    rows = []
    for values in itertools.product(*(vals for _, vals in spec)):
        w = np.zeros(len(EVIDENCE))
        w[0] = 1.0
        for (names, _), v in zip(spec, values):
            for n in names:
                w[EVIDENCE.index(n)] = v
        rows.append(w)
    return np.array(rows)


@dataclass(frozen=True, slots=True)
class _Tuning:
    """The tuning pieces as arrays: evidence, label index, group and song index of each."""

    mats: np.ndarray  # (pieces, evidence, 24)
    refs: np.ndarray  # (pieces,) label as key index
    groups: tuple[str, ...]  # tune group per piece
    songs: tuple[str, ...]  # song per piece


def _tuning(scored: Sequence[Scored]) -> _Tuning:
    tune = [s for s in scored if s.piece.half == "tune" and s.evidence is not None]
    return _Tuning(
        np.stack([s.evidence.matrix for s in tune]),
        np.array([s.piece.tonic_pc + 12 * (s.piece.mode == "minor") for s in tune]),
        tuple(tune_group(s.piece.set) for s in tune),
        tuple(song_of(s.piece) for s in tune),
    )


def _song_scores(combos: np.ndarray, t: _Tuning, idx: np.ndarray) -> dict[str, tuple[str, np.ndarray]]:
    """MIREX score per song (mean over its pieces) for each combo: song -> (group, (combos,))."""
    best = np.einsum("ce,nek->cnk", combos, t.mats[idx]).argmax(axis=2)
    piece = _mirex_table()[best, t.refs[idx][None, :]]  # (combos, pieces)
    by_song: dict[str, list[int]] = {}
    for j, i in enumerate(idx):
        by_song.setdefault(t.songs[i], []).append(j)
    return {song: (t.groups[idx[js[0]]], piece[:, js].mean(axis=1)) for song, js in by_song.items()}


def _objective(song_scores: dict[str, tuple[str, np.ndarray]]) -> np.ndarray:
    """Mean over tune groups of the mean over songs: each group counts equally, each song once."""
    groups = sorted({g for g, _ in song_scores.values()})
    return np.mean([np.mean([v for g2, v in song_scores.values() if g2 == g], axis=0) for g in groups], axis=0)


def _centre(combos: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The centroid of the combos that tie for the best value, rounded to 0.01."""
    tied = combos[values >= values.max() - 1e-12]
    return np.round(tied.mean(axis=0) / 0.01) * 0.01


def fit_weights(scored: Sequence[Scored], family: str = "tonic") -> tuple[Any, float]:
    """The weights of ``family`` that score best on the *tuning* halves (centre of the ties).

    Objective: mean MIREX score per song (a POP909 song's arrangements together), averaged over
    songs within each tune group and then over groups (each group counts equally, whatever its
    size). Returns (KeyWeights, value).
    """
    from corpus.curation.key_evidence import EVIDENCE, KeyWeights

    t = _tuning(scored)
    combos = family_combos(family)
    values = _objective(_song_scores(combos, t, np.arange(len(t.refs))))
    w = _centre(combos, values)
    return KeyWeights(**{n: float(round(v, 2)) for n, v in zip(EVIDENCE, w)}), float(values.max())


def cross_validate(scored: Sequence[Scored], family: str) -> dict[str, Any]:
    """``CV_FOLDS``-fold cross-validation of :func:`fit_weights` over the tuning halves.

    Folds are drawn by song (a song's pieces stay in one fold), with a fixed seed. Returns ``cv``
    (the objective over the held-out songs of every fold) and ``per_song`` (held-out score of
    each song, for paired comparisons between families).
    """
    t = _tuning(scored)
    combos = family_combos(family)
    songs = sorted(set(t.songs))
    order = np.random.default_rng(CV_SEED).permutation(len(songs))
    fold = {songs[j]: k % CV_FOLDS for k, j in enumerate(order)}
    piece_fold = np.array([fold[s] for s in t.songs])
    per_song: dict[str, tuple[str, float]] = {}
    for k in range(CV_FOLDS):
        train, test = np.flatnonzero(piece_fold != k), np.flatnonzero(piece_fold == k)
        w = _centre(combos, _objective(_song_scores(combos, t, train)))
        for song, (g, v) in _song_scores(w[None, :], t, test).items():
            per_song[song] = (g, float(v[0]))
    cv = float(_objective({s: (g, np.array([v])) for s, (g, v) in per_song.items()})[0])
    return {"cv": cv, "per_song": per_song}


def _paired_se(a: dict[str, tuple[str, float]], b: dict[str, tuple[str, float]]) -> float:
    """Standard error of the objective difference a - b (songs paired, groups weighted equally)."""
    groups = sorted({g for g, _ in a.values()})
    var = 0.0
    for g in groups:
        d = np.array([a[s][1] - b[s][1] for s in a if a[s][0] == g])
        if len(d) > 1:
            var += float(d.var(ddof=1)) / len(d)
    return float(np.sqrt(var)) / len(groups)


def select_weights(scored: Sequence[Scored]) -> dict[str, Any]:
    """How ``DEFAULT_WEIGHTS`` is chosen, on the tuning halves of every set only.

    Each family of :data:`FAMILIES` is cross-validated (:func:`cross_validate`); the family kept
    is the one with the fewest free parameters (:func:`n_free`) whose CV score is within one
    standard error (paired by song) of the best family's (the one-standard-error rule: more
    weights must earn their place);
    its weights are then fitted on all tuning halves (:func:`fit_weights`). Returns ``family``,
    ``weights`` (KeyWeights), ``value`` (fitted objective) and ``families`` (cv, se_vs_best,
    n_weights, within_se).
    """
    cvs = {f: cross_validate(scored, f) for f in FAMILIES}
    best = max(cvs, key=lambda f: cvs[f]["cv"])
    table = {}
    for f, r in cvs.items():
        se = _paired_se(cvs[best]["per_song"], r["per_song"]) if f != best else 0.0
        within = cvs[best]["cv"] - r["cv"] <= se + 1e-12  # unrounded: display rounding decides nothing
        table[f] = {"cv": round(r["cv"], 4), "se_vs_best": round(se, 4), "n_weights": n_free(f), "within_se": within}
    ok = [f for f in FAMILIES if table[f]["within_se"]]
    family = min(ok, key=lambda f: (n_free(f), -cvs[f]["cv"]))
    weights, value = fit_weights(scored, family)
    return {"family": family, "weights": weights, "value": value, "best_cv": best, "families": table}
