"""The default key estimate (key_evidence), the labelled sets and the MIREX score."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import symusic

from corpus.curation import key_labels
from corpus.curation.chords import Segment, piece_chords, score_segments
from corpus.curation.key import estimate_key
from corpus.curation.key_evidence import (
    ALBRECHT_SHANAHAN,
    DEFAULT_WEIGHTS,
    EVIDENCE,
    KEY_METHOD,
    KeyWeights,
    chord_evidence,
    estimate_key_v2,
    key_evidence,
    key_from_evidence,
    profile_correlations,
)
from corpus.curation.key_labels import mirex_score, parse_label

TPQ = 480


# ------------------------------------------------------------------------------- MIREX score
@pytest.mark.parametrize(
    ("est", "ref", "want"),
    [
        ((0, "major"), (0, "major"), 1.0),  # C vs C
        ((7, "major"), (0, "major"), 0.5),  # G for C: a fifth above
        ((4, "minor"), (9, "minor"), 0.5),  # E minor for A minor
        ((5, "major"), (0, "major"), 0.0),  # F for C: a fifth below scores 0 (mir_eval)
        ((9, "minor"), (0, "major"), 0.3),  # A minor for C major: relative
        ((0, "major"), (9, "minor"), 0.3),  # C major for A minor: relative
        ((0, "minor"), (0, "major"), 0.2),  # parallel
        ((0, "major"), (0, "minor"), 0.2),
        ((2, "major"), (0, "major"), 0.0),
        ((4, "minor"), (0, "major"), 0.0),  # E minor for C major: nothing
    ],
    ids=lambda v: str(v),
)
def test_mirex_score_hand_cases(est: tuple[int, str], ref: tuple[int, str], want: float) -> None:
    assert mirex_score(*est, *ref) == want


def test_parse_label() -> None:
    assert parse_label("Gb:maj") == (6, "major")
    assert parse_label("C#:min") == (1, "minor")
    assert parse_label(" a:minor ") == (9, "minor")
    for bad in ("H:maj", "C", "C:dorian", ""):
        with pytest.raises(ValueError, match="not a key label"):
            parse_label(bad)


# ------------------------------------------------------------------------------- evidence
def _score(notes: list[tuple[int, int, int]], key_sig: tuple[int, int] | None = None) -> symusic.Score:
    """notes: (pitch, start beat, beats), on a 16th grid."""
    s = symusic.Score(TPQ)
    t = symusic.Track("p", program=0, is_drum=False)
    for p, b, n in notes:
        t.notes.append(symusic.Note(b * TPQ, n * TPQ, p, 80))
    s.tracks.append(t)
    if key_sig is not None:
        s.key_signatures.append(symusic.KeySignature(0, *key_sig))
    return s


# A minor in the white notes: the scale in the melody, an A bass, ending on an A minor chord.
A_MINOR = [(60 + i, b, 1) for b, i in enumerate((9, 11, 12, 14, 16, 17, 19, 21, 19, 17, 16, 14, 12, 11, 9, 12))] + [
    (45, 0, 8),
    (40, 8, 4),
    (45, 12, 4),
    (45, 16, 4),
    (69, 16, 4),
    (72, 16, 4),
    (76, 16, 4),
]


def test_final_and_bass_evidence_point_at_the_tonic() -> None:
    ev = key_evidence(_score(A_MINOR))
    assert ev is not None and ev.matrix.shape == (len(EVIDENCE), 24)
    rows = dict(zip(EVIDENCE, ev.matrix))
    a_minor, c_major = 12 + 9, 0
    assert rows["final_bass"][a_minor] == 1 and rows["final_bass"][c_major] == 0
    assert rows["first_bass"][a_minor] == 1
    assert rows["final_chord"][a_minor] > rows["final_chord"][c_major]
    k = estimate_key_v2(_score(A_MINOR))
    assert k is not None and (k.tonic, k.mode, k.profile) == ("A", "minor", KEY_METHOD)
    # weights that keep the histogram alone give the histogram's answer, as estimate_key does
    alone = key_from_evidence(ev, KeyWeights(bass=0, final_bass=0, final_chord=0, first_bass=0, declared=0, sections=0))
    m21 = estimate_key(_score(A_MINOR))
    assert (alone.tonic_pc, alone.mode) == (m21.tonic_pc, m21.mode)


def test_declared_signature_counts_only_when_notated_and_agreeing() -> None:
    notes = [(60 + i, b, 1) for b, i in enumerate((0, 2, 4, 5, 7, 9, 11, 12))]
    on_grid = key_evidence(_score(notes, key_sig=(0, 0)))  # C major signature, on the grid
    assert on_grid is not None and on_grid.notated and on_grid.declared_agrees
    decl = dict(zip(EVIDENCE, on_grid.matrix))["declared"]
    assert decl[0] == 1 and decl[12 + 9] == 1 and decl.sum() == 2  # C major and A minor
    far = key_evidence(_score(notes, key_sig=(6, 0)))  # F# major signature: does not agree
    assert far is not None and not far.declared_agrees and dict(zip(EVIDENCE, far.matrix))["declared"].sum() == 0
    s = _score(notes, key_sig=(0, 0))
    off = symusic.Score(TPQ)
    t = symusic.Track("p", program=0, is_drum=False)
    for n in s.tracks[0].notes:
        t.notes.append(symusic.Note(n.time + 37, n.duration, n.pitch, n.velocity))  # off the grid: performed
    off.tracks.append(t)
    off.key_signatures.append(symusic.KeySignature(0, 0, 0))
    perf = key_evidence(off)
    assert perf is not None and not perf.notated and dict(zip(EVIDENCE, perf.matrix))["declared"].sum() == 0


def test_no_pitched_notes_no_key() -> None:
    s = symusic.Score(TPQ)
    d = symusic.Track("d", program=0, is_drum=True)
    d.notes.append(symusic.Note(0, TPQ, 36, 90))
    s.tracks.append(d)
    assert estimate_key_v2(s) is None


# ------------------------------------------------------------------------------- labelled sets
def test_labelled_sets_and_halves(data_dir: Path, arrangements_dir: Path) -> None:
    pop = key_labels.pop909_set(arrangements_dir)
    assert 100 <= len(pop) < 150  # songs with more than one labelled key are left out
    assert all(p.half == ("tune" if int(p.id) % 2 == 0 else "held") for p in pop)
    first = next(p for p in pop if p.id == "001")
    assert (first.tonic_pc, first.mode) == (6, "major")  # 001/key_audio.txt: Gb:maj
    versions = key_labels.pop909_set(arrangements_dir, versions=True)
    songs = {p.id: p for p in pop}
    assert len(versions) > 2 * len(pop) and {v.set for v in versions} == {"pop909_versions"}
    for v in versions:  # an earlier arrangement: its song's label and half
        song = songs[v.id.split("-")[0]]
        assert (v.tonic_pc, v.mode, v.half) == (song.tonic_pc, song.mode, song.half)
    main = key_labels.pop909_set(arrangements_dir, main=True)
    assert main and {p.set for p in main} == {"pop909_main"} and not {p.id for p in main} & set(songs)
    for p in main:  # several labelled keys; the label is the one covering >= 2/3 of the time
        segs = key_labels._key_segments(arrangements_dir / p.id / "key_audio.txt")
        total = sum(t for t, _ in segs)
        assert len({k for _, k in segs}) > 1
        assert sum(t for t, k in segs if k == (p.tonic_pc, p.mode)) >= key_labels.MAIN_KEY_SHARE * total
        assert p.half == ("tune" if int(p.id) % 2 == 0 else "held")
    # a song (final arrangement, versions) is on one side of the split only
    sides: dict[str, set[str]] = {}
    for p in pop + versions + main:
        sides.setdefault(key_labels.song_of(p), set()).add(p.half)
    assert all(len(h) == 1 for h in sides.values())
    gold = key_labels.goldberg_set(data_dir)
    assert len(gold) == 30
    assert {p.id for p in gold if p.mode == "minor"} == {"var15", "var21", "var25"}
    assert all(p.tonic_pc == 7 for p in gold)


def test_accuracy_floors_on_a_subset(data_dir: Path, arrangements_dir: Path) -> None:
    """pop909 songs 001-040 and the Goldberg Variations: the default beats music21's estimate."""
    pieces = [p for p in key_labels.pop909_set(arrangements_dir) if int(p.id) <= 40]
    pieces += key_labels.goldberg_set(data_dir)
    scored = key_labels.score_pieces(pieces)
    assert len(scored) == len(pieces) == 60
    for name, floor in (("pop909", 0.9), ("goldberg", 0.95)):
        part = [s for s in scored if s.piece.set == name]
        new, m21 = key_labels.accuracy(part, "default"), key_labels.accuracy(part, "music21")
        assert new["exact"] >= floor, (name, new)
        assert new["exact"] >= m21["exact"] and new["mirex"] >= m21["mirex"], (name, new, m21)
    gold = [s for s in scored if s.piece.set == "goldberg"]
    assert key_labels.accuracy(gold, "default")["exact"] > key_labels.accuracy(gold, "music21")["exact"] + 0.3
    table = key_labels.accuracy_table(scored)
    assert {(r["set"], r["half"]) for r in table} == {
        (s, h) for s in ("pop909", "goldberg") for h in ("tune", "held", "all")
    }


def test_monteverdi_labels_are_the_first_key_the_analysis_names() -> None:
    assert key_labels._first_key("Title: x\nNote: in F major\nm4 b2 F: I6\nm5 V\n") == (5, "major")
    assert key_labels._first_key("m1 g: i b3 V\nm2 Bb: I\n") == (7, "minor")
    assert key_labels._first_key("m0 b3 f#: i\n") == (6, "minor")
    assert key_labels._first_key("Title: no key\nm1 I\n") is None
    mont = key_labels.monteverdi_set()  # lists music21's corpus; converts nothing
    assert len(mont) >= 40 and {p.set for p in mont} == {"monteverdi"}
    assert all(p.half == ("tune" if int(p.id.split(".")[1]) % 2 == 0 else "held") for p in mont)
    by_id = {p.id: p for p in mont}
    assert (by_id["madrigal3.12"].tonic_pc, by_id["madrigal3.12"].mode) == (5, "major")  # "m4 b2 F: I6"
    assert (by_id["madrigal3.02"].tonic_pc, by_id["madrigal3.02"].mode) == (9, "minor")


def test_weight_selection_by_cross_validation(data_dir: Path, arrangements_dir: Path) -> None:
    """Folds keep a song's arrangements together; the kept family is the smallest within one SE."""
    pieces = [p for p in key_labels.pop909_set(arrangements_dir) if int(p.id) <= 60]
    pieces += [p for p in key_labels.pop909_set(arrangements_dir, versions=True) if int(p.id[:3]) <= 60]
    pieces += key_labels.goldberg_set(data_dir)
    scored = key_labels.score_pieces(pieces)
    tune_songs = {key_labels.song_of(s.piece) for s in scored if s.piece.half == "tune"}
    cv = key_labels.cross_validate(scored, "tonic")
    assert set(cv["per_song"]) == tune_songs  # every tuning song scored once, held-out songs never
    assert cv == key_labels.cross_validate(scored, "tonic")  # fixed folds
    sel = key_labels.select_weights(scored)
    fams = sel["families"]
    best = fams[sel["best_cv"]]["cv"]
    within = [f for f, v in fams.items() if v["cv"] >= best - v["se_vs_best"]]
    assert sel["family"] in within
    assert fams[sel["family"]]["n_weights"] == min(fams[f]["n_weights"] for f in within)
    w, value = key_labels.fit_weights(scored, sel["family"])
    assert w == sel["weights"] and value == sel["value"]
    with pytest.raises(ValueError, match="unknown weight family"):
        key_labels.family_combos("nope")


@pytest.mark.slow
def test_default_weights_are_the_selected_ones(data_dir: Path, arrangements_dir: Path) -> None:
    """DEFAULT_WEIGHTS is what select_weights keeps on the tuning halves (music21 conversions: ~40 s)."""
    from corpus.curation.key_evidence import DEFAULT_WEIGHTS

    pieces = [p for p in key_labels.labelled_sets(data_dir, arrangements_dir) if p.half == "tune"]
    sel = key_labels.select_weights(key_labels.score_pieces(pieces))
    assert sel["weights"] == DEFAULT_WEIGHTS
    assert sel["value"] > 0.8


# ------------------------------------------------------------------------------- chord and profile evidence
def _seg(beat: int, n: int, root: int | None, quality: str) -> Segment:
    return Segment(beat, n, float(beat * TPQ), float((beat + n) * TPQ), root, quality, root, 1.0)


def test_chord_evidence_on_a_hand_progression() -> None:
    """C F G7 C | Am (N between): tonic, primary chords and the V -> I cadence of C major vs A minor."""
    segs = [
        _seg(0, 4, 0, "maj"),
        _seg(4, 4, 5, "maj"),
        _seg(8, 4, 7, "7"),
        _seg(12, 4, 0, "maj"),
        _seg(16, 2, None, "N"),
        _seg(18, 4, 9, "min"),
    ]
    phrase = np.array([0, 16 * TPQ])  # bar lines of bars 1 and 5 (4/4)
    ev = chord_evidence(segs, phrase)
    tonic, at_phrase, diatonic, cadence = ev
    c_major, a_minor = 0, 12 + 9
    assert tonic[c_major] == pytest.approx(8 / 20) and tonic[a_minor] == pytest.approx(4 / 20)
    assert tonic.sum() == pytest.approx(16 / 20)  # each triad is some key's tonic chord, G7 none; N left out
    # at tick 0: C; at 16 beats: N (not counted) and just before it: C
    assert at_phrase[c_major] == 1.0 and at_phrase[a_minor] == 0.0
    assert diatonic[c_major] == 1.0  # I IV V7 I vi
    assert diatonic[a_minor] == pytest.approx(8 / 20)  # only F (VI) and Am (i) are A minor's
    # G7 -> C, and C -> F (I -> IV falls a fifth too: it reads as V -> I of F); F -> G7 does not
    assert cadence[c_major] == 0.5 and cadence[5] == 0.5 and cadence.sum() == 1.0
    assert not chord_evidence([_seg(0, 4, None, "N")], phrase).any()


def test_chord_and_profile_evidence_turn_with_the_music(arrangements_dir: Path) -> None:
    """A real POP909 song played 3 semitones higher: every row but ``declared`` turns by 3 keys."""
    s = symusic.Score.from_midi((arrangements_dir / "001" / "001.mid").read_bytes())
    a, b = key_evidence(s), key_evidence(s.shift_pitch(3))
    assert a is not None and b is not None
    rows_a, rows_b = dict(zip(EVIDENCE, a.matrix)), dict(zip(EVIDENCE, b.matrix))
    turned = np.r_[(np.arange(12) + 3) % 12, 12 + (np.arange(12) + 3) % 12]
    for name in EVIDENCE:
        if name == "declared":
            continue
        want = np.zeros(24)
        want[turned] = rows_a[name]
        assert rows_b[name] == pytest.approx(want, abs=1e-9), name
    for name in ("chord_tonic", "chord_diatonic", "cadence", "chord_phrase"):
        assert rows_a[name].any() and (rows_a[name] >= 0).all() and (rows_a[name] <= 1 + 1e-12).all(), name
    assert rows_a["cadence"].sum() == pytest.approx(1.0)


def test_albrecht_shanahan_correlations_are_pearson() -> None:
    hist = np.array([5.0, 0.1, 3.0, 0.2, 4.0, 2.5, 0.3, 4.5, 0.1, 2.0, 0.4, 1.5])
    r = profile_correlations(hist, *ALBRECHT_SHANAHAN)
    for k in range(24):
        prof = np.roll(ALBRECHT_SHANAHAN[k // 12], k % 12)
        assert r[k] == pytest.approx(np.corrcoef(hist, prof)[0, 1]), k
    assert int(r.argmax()) == 0  # C major
    assert not profile_correlations(np.ones(12), *ALBRECHT_SHANAHAN).any()


def test_curate_reuses_the_chord_segments(arrangements_dir: Path) -> None:
    """piece_chords on segments computed once (as curate does) = piece_chords computing them."""
    s = symusic.Score.from_midi((arrangements_dir / "002" / "002.mid").read_bytes())
    segmented = score_segments(s)
    assert segmented[0] and segmented[1] >= len(segmented[0])
    assert piece_chords(s, "x", 0, "major", segmented=segmented) == piece_chords(s, "x", 0, "major")
    ev = key_evidence(s)
    assert ev is not None and np.array_equal(ev.matrix, key_evidence(s, chord_segments=segmented[0]).matrix)


def test_families_count_free_parameters() -> None:
    assert key_labels.n_free("tonic") == 1
    assert key_labels.n_free("tonic+chord_diatonic") == 2
    assert key_labels.n_free("bellman+tonic") == 2  # a profile in place of Aarden-Essen is a choice
    combos = key_labels.family_combos("bellman+tonic")
    assert (combos[:, EVIDENCE.index("hist")] == 0).all() and (combos[:, EVIDENCE.index("hist_bellman")] == 1).all()
    assert DEFAULT_WEIGHTS.chord_diatonic > 0 and KEY_METHOD == "evidence-v3"
