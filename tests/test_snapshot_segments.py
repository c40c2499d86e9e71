"""Segments (``--segment bars:N[:HOP]``) and mixtures (``--mix``) on a small real lake.

Bar lines are checked against the pieces themselves: the notes each segment's tokens carry are
the notes of the piece (decoded with symusic, preprocessed by miditok) whose onsets lie between
the segment's bar lines, computed here from the time signatures; for REMI, CPWord and MuMIDI,
each segment opens with miditok's own ``Bar`` token; for Structured with a note's ``TimeShift``;
for Octuple, every token of a segment carries a bar number of the segment. An MMM window holds the
window's bars of every track block: decoded by miditok, it gives the piece's notes of those bars.
"""

from __future__ import annotations

from collections import Counter
from fractions import Fraction
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import symusic

from corpus import snapshot as S
from corpus.cli import main
from corpus.parse import smf_bytes
from corpus.tokenize import presets
from tests.train import DATA, build_test_lake

SPLIT = (0.6, 0.2, 0.2)


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory):
    if not DATA.is_dir():
        pytest.skip(f"real test data not found at {DATA} (shared/ must sit beside the repository)")
    return build_test_lake(
        tmp_path_factory.mktemp("seg") / "lake", ("tsd", "remi", "cpword", "octuple", "structured", "mmm", "mumidi")
    )


def _create(lake, spec):
    with lake.lock():
        return S.create(lake, spec)


def _rows(lake, scheme: str) -> dict[str, dict]:
    got = lake.query(
        f"SELECT piece_id, ids, seq_lengths, bar_starts FROM tokens WHERE scheme = '{scheme}' AND transpose = 0"
    ).to_pylist()
    return {r["piece_id"]: r for r in got}


def _bar_ticks(score: symusic.Score, last: int) -> list[int]:
    """Bar lines from the time signatures (4/4 before the first), written out independently of corpus.tokenize.bars."""
    sigs = {0: (4, 4)}
    for ts in score.time_signatures:
        sigs[ts.time] = (ts.numerator, ts.denominator)
    out: list[int] = []
    times = sorted(sigs)
    for i, t0 in enumerate(times):
        end = times[i + 1] if i + 1 < len(times) else last + 1
        step = score.ticks_per_quarter * 4 * sigs[t0][0] // sigs[t0][1]
        out += list(range(t0, end, step))
    return [t for t in out if t <= last]


def _note_tokens(tok) -> np.ndarray:
    """Per id (of the Pitch sub-vocabulary for multi-vocabulary schemes): 1 where the token is a note's pitch."""
    vocab = tok.vocab[tok.vocab_types_idx["Pitch"]] if tok.is_multi_voc else tok.vocab
    flags = np.zeros(len(vocab), dtype=np.int64)
    for name, i in vocab.items():
        if name.split("_")[0] in ("Pitch", "PitchDrum"):
            flags[i] = 1
    return flags


def _segment_table(path: Path) -> list[dict]:
    out = []
    for sp in S.SPLITS:
        tok = np.load(path / sp / "tokens.npy")
        for r in pq.read_table(path / sp / "sequences.parquet").to_pylist():
            r["split"] = sp
            r["ids"] = tok[r["start"] : r["start"] + r["length"]]
            out.append(r)
    return out


@pytest.mark.parametrize(
    ("scheme", "segment"),
    [
        ("tsd", (2, 2)),
        ("tsd", (16, 16)),
        ("remi", (16, 8)),
        ("cpword", (2, 2)),
        ("octuple", (2, 2)),
        ("structured", (2, 2)),
        ("mumidi", (4, 2)),
    ],
)
def test_segments_hold_the_notes_between_their_bar_lines(lake, scheme: str, segment: tuple[int, int]) -> None:
    res = _create(lake, S.SnapshotSpec(f"seg-{scheme}", scheme, split=SPLIT, segment=segment))
    seqs = _segment_table(res.path)
    assert seqs and res.manifest["segments"]["bars"] == segment[0] and res.manifest["segments"]["hop"] == segment[1]
    tok, _ = presets.build(scheme)
    is_note = _note_tokens(tok)
    multi = tok.is_multi_voc
    slot = tok.vocab_types_idx["Bar"] if multi else None
    bar_id = (tok.vocab[slot] if multi else tok.vocab).get("Bar_None")
    pitch_slot = tok.vocab_types_idx["Pitch"] if multi else None
    bar_names = {i: n for n, i in tok.vocab[slot].items()} if multi else {}
    rows = _rows(lake, scheme)
    raw = {p: lake.raw_path(p) for p in rows}
    checked = 0
    by_piece: dict[str, list[dict]] = {}
    for s in seqs:
        by_piece.setdefault(s["piece_id"], []).append(s)
    for pid, ss in by_piece.items():
        score = tok.preprocess_score(symusic.Score.from_midi(smf_bytes(Path(raw[pid]).read_bytes())))
        last = max([n.time for t in score.tracks for n in t.notes] + [t.time for t in score.time_signatures] + [0])
        ticks = _bar_ticks(score, last)
        for s in ss:
            a, b = s["segment_start_bar"], s["segment_end_bar"]
            assert 0 < b - a <= segment[0] and a % segment[1] == 0
            # a score whose tracks preprocessing emptied still has one sequence (its global events)
            if tok.one_token_stream:  # MuMIDI: one sequence of every track
                notes = [n for t in score.tracks for n in t.notes]
            else:
                notes = score.tracks[s["track"]].notes if s["track"] < len(score.tracks) else []
            lo = ticks[a]
            hi = ticks[b] if b < len(ticks) else float("inf")
            want = sum(1 for n in notes if lo <= n.time < hi)
            ids = s["ids"][:, pitch_slot] if multi else s["ids"]
            assert int(is_note[ids].sum()) == want, (pid, s["track"], a, b)
            if scheme == "octuple":  # every token carries its bar number, one of the segment's
                names = [bar_names[int(i)] for i in s["ids"][:, slot]]
                assert all(n.startswith("Bar_") and a <= int(n[4:]) < b for n in names), (pid, a, b, names)
            elif scheme == "structured":  # a note's TimeShift: the first note at or after the bar line
                assert tok[int(s["ids"][0])].startswith("TimeShift_"), (pid, a)
            elif bar_id is not None:
                ids = s["ids"][:, slot] if multi else s["ids"]
                assert ids[0] == bar_id  # REMI, CPWord: the segment opens on miditok's own bar line
                bs, n = rows[pid]["bar_starts"][s["track"]], rows[pid]["seq_lengths"][s["track"]]
                real = sum(1 for k in range(a, b) if bs[k] < n)  # bars past a track's last Bar token start at its end
                assert int((ids == bar_id).sum()) == real
            checked += 1
    assert checked == len(seqs) > 50
    # windows with no token (an Octuple bar without notes starts at the next token) are dropped and counted
    seg = res.manifest["segments"]
    assert len(seqs) == seg["segments"] - seg["empty_segments"]
    if scheme == "octuple":
        assert seg["empty_segments"] > 0
    # every bar of every track is in a window (none left out, the tail window reaches the end)
    for pid, r in rows.items():
        for track, bs in enumerate(r["bar_starts"]):
            covered = {
                x
                for s in by_piece.get(pid, [])
                if s["track"] == track
                for x in range(s["segment_start_bar"], s["segment_end_bar"])
            }
            nonempty = {
                k for k in range(len(bs)) if (bs[k + 1] if k + 1 < len(bs) else r["seq_lengths"][track]) > bs[k]
            }
            assert nonempty <= covered, (pid, track)


def _mmm_notes(score: symusic.Score, lo: Fraction, hi: Fraction, shift: Fraction = Fraction(0)) -> Counter:
    """(onset in quarters + shift, pitch, program or -1 for drums) of the notes with lo <= onset < hi."""
    tpq = score.ticks_per_quarter
    return Counter(
        (Fraction(n.time, tpq) + shift, n.pitch, -1 if t.is_drum else t.program)
        for t in score.tracks
        for n in t.notes
        if lo <= Fraction(n.time, tpq) + shift < hi
    )


def _check_mmm_windows(lake, res, bars: int, hop: int, limit: int | None) -> int:
    """Every sequence of an MMM segment snapshot, decoded by miditok, gives the piece's notes of its
    bars [start, end) (bar lines from the time signatures, written out here), in every track; it is
    every track block's header, bars and Track_End. Returns the long-bar parts (cut by tokens)."""
    import miditok

    tok, _ = presets.build("mmm")
    rows = _rows(lake, "mmm")
    seqs = _segment_table(res.path)
    cut_bars = set()
    by_piece: dict[str, list[dict]] = {}
    for s in seqs:
        by_piece.setdefault(s["piece_id"], []).append(s)
    for pid, ss in by_piece.items():
        score = tok.preprocess_score(symusic.Score.from_midi(smf_bytes(lake.raw_path(pid).read_bytes())))
        last = max([n.time for t in score.tracks for n in t.notes] + [t.time for t in score.time_signatures] + [0])
        ticks = [Fraction(t, score.ticks_per_quarter) for t in _bar_ticks(score, last)]
        n_blocks = [tok[int(i)] for i in rows[pid]["ids"]].count("Track_Start")
        assert len(rows[pid]["bar_starts"]) == n_blocks and len(rows[pid]["seq_lengths"]) == 1
        for s in ss:
            a, b = s["segment_start_bar"], s["segment_end_bar"]
            assert 0 < b - a <= bars and s["track"] == 0
            names = [tok[int(i)] for i in s["ids"]]
            if limit is not None:
                assert 0 < len(names) <= limit
            whole = names[0] == "Track_Start" and names[-1] == "Track_End" and names.count("Track_Start") == n_blocks
            if limit is not None and not whole:  # a bar longer than the limit with the headers: cut by tokens
                assert b - a == 1
                cut_bars.add((pid, a))
                continue
            assert whole, (pid, a, b)
            assert limit is not None or a % hop == 0
            lo = ticks[a]
            hi = ticks[b] if b < len(ticks) else Fraction(10**9)
            dec = tok.decode(miditok.TokSequence(ids=[int(i) for i in s["ids"]]))
            # the window decodes from its first bar line: shifted back there, its notes are the piece's
            assert _mmm_notes(dec, Fraction(-1), Fraction(10**9), lo) == _mmm_notes(score, lo, hi), (pid, a, b)
    seg = res.manifest["segments"]
    assert len(seqs) > 20 and seg["bars"] == bars and seg["hop"] == hop
    return len(cut_bars)


def test_mmm_windows_take_their_bars_from_every_track(lake) -> None:
    res = _create(lake, S.SnapshotSpec("seg-mmm", "mmm", split=SPLIT, segment=(4, 2)))
    _check_mmm_windows(lake, res, 4, 2, None)
    seg = res.manifest["segments"]
    assert "MMM: a window is across every track" in seg["policy"]
    assert "MMM: a window is across every track" in (res.path / "README.md").read_text()
    assert len(_segment_table(res.path)) == seg["segments"] - seg["empty_segments"]
    # every bar of every piece is in a window
    rows = _rows(lake, "mmm")
    covered: dict[str, set[int]] = {}
    for s in _segment_table(res.path):
        covered.setdefault(s["piece_id"], set()).update(range(s["segment_start_bar"], s["segment_end_bar"]))
    for pid, r in rows.items():
        blocks = r["bar_starts"]
        nonempty = {k for k in range(len(blocks[0]) - 1) if any(bl[k + 1] > bl[k] for bl in blocks)}
        assert nonempty <= covered.get(pid, set()), pid


def test_mmm_windows_cut_at_bar_lines_keep_every_track(lake) -> None:
    limit = 160
    res = _create(lake, S.SnapshotSpec("seg-mmm-cut", "mmm", split=SPLIT, segment=(8, 8), max_seq_len=limit))
    cut = _check_mmm_windows(lake, res, 8, 8, limit)
    assert res.manifest["segments"]["long_bars_cut"] == cut
    per_window = Counter((s["piece_id"], s["segment_start_bar"] // 8) for s in _segment_table(res.path))
    assert max(per_window.values()) > 1  # some window was cut into several sequences


def test_trained_vocabulary_is_refused_in_one_line(lake, capsys: pytest.CaptureFixture[str]) -> None:
    """A trained vocabulary's merged tokens can cross a bar line: --segment refuses it in one line."""
    from corpus.engine import Engine
    from corpus.tokenize.stage import tokenize, train_tokenizer

    with lake.lock():
        reg = train_tokenizer(lake, "tsd", 400)
        with Engine(workers=0) as e:
            tokenize(lake, e, [reg.scheme])
    capsys.readouterr()
    argv = ["--lake", str(lake.root), "--workers", "0", "snapshot", "create", "bad", "--scheme", reg.scheme]
    rc = main([*argv, "--segment", "bars:2"])
    err = capsys.readouterr().err.strip()
    errors = [x for x in err.splitlines() if x.startswith("midicorpus:")]
    assert rc != 0 and len(errors) == 1 and err.splitlines()[-1] == errors[0], err
    assert f"--segment cannot cut scheme {reg.scheme!r}" in errors[0] and "trained" in errors[0], err
    assert "Traceback" not in err


def test_max_seq_len_cuts_on_bar_lines(lake) -> None:
    limit = 96
    res = _create(lake, S.SnapshotSpec("seg-cut", "tsd", split=SPLIT, segment=(16, 16), max_seq_len=limit))
    rows = _rows(lake, "tsd")
    seqs = _segment_table(res.path)
    long_bars = set()
    for s in seqs:
        assert 0 < s["length"] <= limit
        r = rows[s["piece_id"]]
        first = sum(r["seq_lengths"][: s["track"]])
        bs = [*r["bar_starts"][s["track"]], r["seq_lengths"][s["track"]]]
        a, b = s["segment_start_bar"], s["segment_end_bar"]
        whole = np.asarray(r["ids"][first + bs[a] : first + bs[b]])
        if len(whole) == s["length"]:
            assert np.array_equal(s["ids"], whole)  # starts and ends on bar lines
        else:  # one bar longer than the limit, cut at the token count
            assert b - a == 1 and len(whole) > limit
            long_bars.add((s["piece_id"], s["track"], a))
    assert res.manifest["segments"]["long_bars_cut"] == len(long_bars)
    assert res.manifest["segments"]["empty_segments"] >= 0
    # a whole window is never longer than the limit in one piece: it was cut into several sequences
    per_window = Counter((s["piece_id"], s["track"], s["segment_start_bar"] // 16) for s in seqs)
    assert max(per_window.values()) > 1


def test_segments_stay_in_their_piece_split(lake) -> None:
    res = _create(lake, S.SnapshotSpec("seg-split", "tsd", split=SPLIT, segment=(2, 1)))
    seqs = _segment_table(res.path)
    split_of: dict[str, set[str]] = {}
    group_of: dict[str, set[str]] = {}
    for s in seqs:
        split_of.setdefault(s["piece_id"], set()).add(s["split"])
        group_of.setdefault(s["song_group"], set()).add(s["split"])
    assert all(len(v) == 1 for v in split_of.values())
    assert all(len(v) == 1 for v in group_of.values())
    assert {s["split"] for s in seqs} == set(S.SPLITS)
    plain = _create(lake, S.SnapshotSpec("seg-split-plain", "tsd", split=SPLIT))
    base = {r["piece_id"]: r["split"] for r in _segment_table(plain.path)}
    assert {p: next(iter(v)) for p, v in split_of.items()} == {p: base[p] for p in split_of}


def test_hf_rows_carry_the_segment(lake) -> None:
    res = _create(lake, S.SnapshotSpec("seg-hf", "tsd", split=SPLIT, segment=(2, 2)))
    for sp in S.SPLITS:
        hf = pq.read_table(res.path / sp / "data-00000-of-00001.parquet")
        seq = pq.read_table(res.path / sp / "sequences.parquet")
        seg = hf.column("segment").to_pylist()
        assert [x["start_bar"] for x in seg] == seq.column("segment_start_bar").to_pylist()
        assert [x["end_bar"] for x in seg] == seq.column("segment_end_bar").to_pylist()
        tok = np.load(res.path / sp / "tokens.npy")
        ids = hf.column("input_ids").to_pylist()
        starts = seq.column("start").to_pylist()
        assert all(list(tok[s : s + len(x)]) == x for s, x in zip(starts, ids, strict=True))


def test_same_recipe_same_version_and_bytes_and_the_column_changes_nothing_without_segment(lake, tmp_path) -> None:
    spec = S.SnapshotSpec("seg-same", "tsd", split=SPLIT, segment=(16, 8), max_seq_len=128)
    a = _create(lake, spec)
    m = S.build(lake, spec, tmp_path / "again")
    assert m["version"] == a.version
    for rel in a.manifest["files"]:
        assert (tmp_path / "again" / rel).read_bytes() == (a.path / rel).read_bytes(), rel
    # without --segment, the rows' bar starts are not read: NULL them (a lake tokenized before the
    # column existed) and the snapshot keeps its version and bytes
    plain = S.SnapshotSpec("seg-plain", "tsd", split=SPLIT, max_seq_len=128)
    before = S.build(lake, plain, tmp_path / "before")
    with lake.lock(), lake.transaction({"command": "test: forget bar starts"}) as tx:
        tx._con().execute("UPDATE lake.store.tokens SET bar_starts = NULL WHERE scheme = 'tsd'")
    try:
        after = S.build(lake, plain, tmp_path / "after")
        assert after["version"] == before["version"]
        for rel in before["files"]:
            assert (tmp_path / "after" / rel).read_bytes() == (tmp_path / "before" / rel).read_bytes(), rel
        with pytest.raises(S.SnapshotError, match="--redo-bars"):
            _create(lake, spec)
    finally:  # put them back as the tokenizer makes them
        from corpus.engine import Engine
        from corpus.tokenize.stage import tokenize

        with lake.lock(), Engine(workers=0) as e:
            s = tokenize(lake, e, ["tsd"], redo_bars=True)
        assert s.schemes[0].pieces == len(_rows(lake, "tsd"))
    assert _create(lake, spec).version == a.version  # the re-tokenized rows give the same segments
    assert lake.query("SELECT count(*) AS n FROM tokens WHERE scheme = 'tsd' AND bar_starts IS NULL").to_pylist() == [
        {"n": 0}
    ]


def test_mixture_proportions_over_an_epoch(lake) -> None:
    from train.data import PackedBatches

    weights = {"magenta": 0.6, "miditok": 0.4}
    res = _create(lake, S.SnapshotSpec("mix", "tsd", split=SPLIT, segment=(2, 2), mix=tuple(sorted(weights.items()))))
    mix = res.manifest["mix"]
    assert mix["weights"] == weights and mix["by"] == "source" and set(mix["labels"]) == set(weights)
    assert "mixture of the train split" in (res.path / "README.md").read_text()
    labels = np.asarray(pq.read_table(res.path / "train" / "sequences.parquet").column("mix_label").to_pylist())
    ds = PackedBatches(res.path, "train", seq_len=64, batch_size=4, seed=7)
    for epoch in (0, 1):
        order, starts = ds._layout(epoch)
        n_tok = ds.n_windows(epoch) * ds.seq_len  # the tokens the epoch's windows cover
        lens = np.diff(starts)
        inside = np.clip(n_tok - starts[:-1], 0, lens)
        per = Counter()
        for seq, n in zip(order, inside, strict=True):
            per[labels[seq]] += int(n)
        total = sum(per.values())
        for k, w in weights.items():
            assert abs(per[k] / total - w) < 0.02, (epoch, k, per[k] / total)
        rep = ds.mix_report(epoch)
        assert rep is not None and abs(rep["magenta"]["share"] - 0.6) < 0.02
        assert rep["magenta"]["repeats"] > 1 > rep["miditok"]["repeats"]  # magenta is the smaller source here
    # deterministic per (seed, epoch); another epoch draws another order
    again = PackedBatches(res.path, "train", seq_len=64, batch_size=4, seed=7)
    assert np.array_equal(again._layout(1)[0], ds._layout(1)[0])
    assert not np.array_equal(ds._layout(0)[0], ds._layout(1)[0])
    assert np.array_equal(
        next(iter(again)), next(iter(PackedBatches(res.path, "train", seq_len=64, batch_size=4, seed=7)))
    )
    # a resumed loader continues the mixed epoch at the next batch, repeating and skipping nothing
    from train.data import ResumableLoader

    first = ResumableLoader(PackedBatches(res.path, "train", seq_len=64, batch_size=4, seed=7))
    for _ in range(3):
        next(first)
    state = first.state_dict()
    want = [next(first) for _ in range(2)]
    resumed = ResumableLoader(PackedBatches(res.path, "train", seq_len=64, batch_size=4, seed=7))
    resumed.load_state_dict(state)
    assert all(np.array_equal(next(resumed), w) for w in want)
    # valid and test are never re-weighted: every sequence once
    for sp in ("valid", "test"):
        v = PackedBatches(res.path, sp, seq_len=64, batch_size=4, seed=7)
        assert v.mix_report() is None
        assert sorted(v._layout(0)[0].tolist()) == list(range(v.shards.n_sequences))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--segment", "bars:0"], "--segment bars:N:HOP needs N >= 1"),
        (["--segment", "beats:4"], "--segment must be bars:N or bars:N:HOP"),
        (["--segment", "bars:4:8"], "1 <= HOP <= N"),
        (["--mix", "magenta=0.5,miditok=0.6"], "--mix weights must sum to 1"),
        (["--mix", "magenta=-0.5,miditok=1.5"], "--mix weights must be non-negative"),
        (["--mix", "magenta"], "--mix must be LABEL=WEIGHT"),
        (["--mix", "lakh=1"], "--mix label(s) 'lakh' have no train pieces"),
        (["--mix", "magenta=1"], "--mix gives no weight to label(s) 'miditok'"),
        (["--mix", "a=1", "--mix-by", "no_such_column"], "--mix-by 'no_such_column' is not a valid expression"),
        (["--mix-by", "texture"], "--mix-by needs --mix"),
    ],
    ids=[
        "zero",
        "unit",
        "hop",
        "sum",
        "negative",
        "form",
        "unknown",
        "unweighted",
        "mix-by",
        "mix-by-alone",
    ],
)
def test_bad_segment_and_mix_are_one_line(lake, capsys: pytest.CaptureFixture[str], argv, message) -> None:
    capsys.readouterr()
    scheme = [] if "--scheme" in argv else ["--scheme", "tsd"]
    rc = main(["--lake", str(lake.root), "--workers", "0", "snapshot", "create", "bad", *scheme, *argv])
    err = capsys.readouterr().err.strip()
    assert rc != 0
    # one error line (a progress line may come before it when the build ran past a second)
    errors = [x for x in err.splitlines() if x.startswith("midicorpus:")]
    assert len(errors) == 1 and err.splitlines()[-1] == errors[0], err
    assert message in errors[0] and "Traceback" not in err, err


def test_mix_by_a_sql_label(lake) -> None:
    res = _create(
        lake,
        S.SnapshotSpec("mix-tex", "tsd", split=SPLIT, mix=(("monophonic", 0.5), ("polyphonic", 0.5)), mix_by="texture"),
    )
    assert res.manifest["mix"]["by"] == "texture"
    got = set(pq.read_table(res.path / "train" / "sequences.parquet").column("mix_label").to_pylist())
    assert got <= {"monophonic", "polyphonic"} and got


def test_mumidi_tokens_are_padded_to_the_vocabularies_width(lake) -> None:
    """MuMIDI's Bar / Position / Program tokens hold fewer ids than its vocabularies: a snapshot fills
    the missing slots with PAD, every other id stays where miditok put it."""
    res = _create(lake, S.SnapshotSpec("mumidi-plain", "mumidi", split=SPLIT))
    tok, _ = presets.build("mumidi")
    pad = [v["PAD_None"] for v in tok.vocab]
    got = lake.query("SELECT piece_id, ids_multi FROM tokens WHERE scheme = 'mumidi' AND transpose = 0").to_pylist()
    rows = {r["piece_id"]: r["ids_multi"] for r in got}
    short = 0
    for s in _segment_table(res.path):
        want = [t + pad[len(t) :] for t in rows[s["piece_id"]]]
        short += sum(len(t) < len(pad) for t in rows[s["piece_id"]])
        assert s["ids"].tolist() == want, s["piece_id"]
    assert short > 0
