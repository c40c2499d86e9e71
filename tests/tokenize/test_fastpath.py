"""The REMI / TSD / MIDILike / Structured / CPWord / Octuple / MMM fast path gives exactly miditok's ids, on every real file."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

miditok = pytest.importorskip("miditok")
symusic = pytest.importorskip("symusic")

from corpus.tokenize import fastpath  # noqa: E402 - after the importorskip guards

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
SOURCES = ("midi", "lakh", "lakh_derived", "mutopia/ftp")
SCHEMES = fastpath.SCHEMES


@pytest.fixture(scope="module")
def real_scores() -> list[tuple[str, object]]:
    """Every file of the real sources that symusic parses, as (relative path, Score)."""
    if not DATA.is_dir():
        pytest.skip(f"real MIDI data not found at {DATA}")
    scores = []
    for source in SOURCES:
        for path in sorted((DATA / source).rglob("*")):
            if not path.is_file():
                continue
            try:
                scores.append((str(path.relative_to(DATA)), symusic.Score(str(path))))
            except (RuntimeError, ValueError, OSError, EOFError):
                continue  # not parseable: out of scope (the sources step rejects it)
    if not scores:
        pytest.skip(f"no parseable MIDI file under {DATA}/{{{','.join(SOURCES)}}}")
    return scores


def _first_difference(tokenizer, expected, got) -> str:
    """Readable description of the first differing token."""
    if not tokenizer.one_token_stream:
        if len(expected) != len(got):
            return f"{len(expected)} sequences expected, got {len(got)}"
        index = next(i for i, (a, b) in enumerate(zip(expected, got, strict=True)) if a != b)
        expected, got = expected[index], got[index]
        where = f"sequence {index}, "
    else:
        where = ""
    k = next((i for i, (a, b) in enumerate(zip(expected, got, strict=False)) if a != b), min(len(expected), len(got)))
    window = slice(max(k - 3, 0), k + 3)
    return (
        f"{where}token {k} (lengths {len(expected)} vs {len(got)}): "
        f"expected {[tokenizer[i] for i in expected[window]]}, got {[tokenizer[i] for i in got[window]]}"
    )


def _assert_identical(tokenizer, named_scores) -> None:
    fast = fastpath.FastTokenizer(tokenizer)
    mismatches = []
    for name, score in named_scores:
        expected = fastpath.miditok_ids(tokenizer.encode(score))
        got = fast.encode_ids(score)
        if got != expected:
            mismatches.append(f"{name}: {_first_difference(tokenizer, expected, got)}")
    assert not mismatches, f"{len(mismatches)}/{len(named_scores)} differ:\n" + "\n".join(mismatches[:10])
    assert fast.fallbacks == 0, "every score of these configs should take the fast path"


@pytest.mark.parametrize("scheme", SCHEMES)
def test_identical_ids_on_every_real_file(scheme, real_scores):
    _assert_identical(fastpath.make_tokenizer(scheme), real_scores)


def _synthetic_score(seed: int):
    """Random score stressing time signatures (unsupported, mid-bar, mixed denominators),
    tempos, drums, odd ticks/quarter, overlapping and zero-length notes, empty tracks."""
    rng = random.Random(seed)
    score = symusic.Score(rng.choice([24, 96, 120, 384, 480, 1000]))
    tpq = score.ticks_per_quarter
    end = rng.randint(1, 40) * tpq
    time_sigs = [(0, 4, 4)] if rng.random() < 0.5 else []
    time_sigs += [
        (rng.randint(0, end), rng.choice([1, 2, 3, 4, 5, 6, 7, 9, 12]), rng.choice([2, 4, 8, 16]))
        for _ in range(rng.randint(0, 5))
    ]
    for time, num, den in sorted(time_sigs):
        score.time_signatures.append(symusic.TimeSignature(time, num, den))
    for _ in range(rng.randint(0, 6)):
        score.tempos.append(symusic.Tempo(rng.randint(0, end), rng.uniform(30, 300)))
    score.tempos.sort()
    for _ in range(rng.randint(0, 4)):
        track = symusic.Track(program=rng.randint(0, 127), is_drum=rng.random() < 0.25)
        for _ in range(rng.randint(0, 60)):
            duration = rng.randint(0, tpq * rng.choice([1, 4, 20]))
            track.notes.append(symusic.Note(rng.randint(0, end), duration, rng.randint(0, 127), rng.randint(1, 127)))
        track.notes.sort()
        score.tracks.append(track)
    return score


SYNTHETIC = [(f"synthetic-{seed}", _synthetic_score(seed)) for seed in range(120)]

# Configs beyond the two presets that `supports` accepts, each exercising one branch.
EXTRA_CONFIGS = {
    "no_velocities": {"use_velocities": False},
    "programs_per_track": {"use_programs": True, "one_token_stream_for_programs": False},
    "no_time_signatures": {"use_time_signatures": False, "use_tempos": True},
    "remove_duplicated_notes": {"remove_duplicated_notes": True, "use_tempos": True},
    "durations_for_some_programs": {"use_programs": True, "use_note_duration_programs": list(range(64))},
    "coarse_beat_res": {
        "beat_res": {(0, 2): 4, (2, 8): 2},
        "use_tempos": True,
        "delete_equal_successive_tempo_changes": True,
    },
    "wide_time_signature_range": {
        "time_signature_range": {2: [1, 2, 3], 4: (1, 7), 8: [3, 5, 6, 7, 9, 12], 16: [7, 9]},
        "use_programs": True,
    },
    "no_pitchdrum_some_programs": {
        "use_pitchdrum_tokens": False,
        "use_programs": True,
        "programs": [-1, *range(40)],
    },
}


@pytest.mark.parametrize("scheme", SCHEMES)
def test_identical_ids_on_synthetic_scores(scheme):
    _assert_identical(fastpath.make_tokenizer(scheme), SYNTHETIC)


@pytest.mark.parametrize("config_name", sorted(EXTRA_CONFIGS))
@pytest.mark.parametrize("tokenizer_class", ["REMI", "TSD", "MIDILike", "Structured", "CPWord", "Octuple"])
def test_identical_ids_for_other_supported_configs(tokenizer_class, config_name, real_scores):
    tokenizer = getattr(miditok, tokenizer_class)(miditok.TokenizerConfig(**EXTRA_CONFIGS[config_name]))
    assert fastpath.supports(tokenizer)
    # A slice of the real files keeps the default run short; the presets cover all.
    _assert_identical(tokenizer, SYNTHETIC[:60] + real_scores[::8])


def test_output_layout_matches_tokenizer_streams(real_scores):
    name, score = next((n, s) for n, s in real_scores if len(s.tracks) > 1)
    per_track = fastpath.FastTokenizer(fastpath.make_tokenizer("remi")).encode_ids(score)
    assert isinstance(per_track, list) and all(isinstance(seq, list) for seq in per_track), name
    one_stream = fastpath.FastTokenizer(fastpath.make_tokenizer("remi_multitrack")).encode_ids(score)
    assert isinstance(one_stream, list) and all(isinstance(i, int) for i in one_stream), name


def test_encode_ids_accepts_a_path(real_scores):
    name, score = real_scores[0]
    tokenizer = fastpath.make_tokenizer("tsd")
    assert fastpath.FastTokenizer(tokenizer).encode_ids(DATA / name) == fastpath.miditok_ids(tokenizer.encode(score))


def test_fallback_returns_miditok_ids(monkeypatch, real_scores):
    tokenizer = fastpath.make_tokenizer("remi")
    fast = fastpath.FastTokenizer(tokenizer)

    def refuse(_score):
        raise fastpath._Fallback

    monkeypatch.setattr(fast, "_encode_preprocessed", refuse)
    name, score = real_scores[0]
    assert fast.encode_ids(score) == fastpath.miditok_ids(tokenizer.encode(score)), name
    assert fast.fallbacks == 1


class _CustomREMI(miditok.REMI):
    """A subclass may override what the fast path replicates."""


def _trained_remi():
    tokenizer = miditok.REMI()
    files = sorted((DATA / "midi").rglob("*.mid"))[:3]
    if not files:
        pytest.skip(f"no MIDI file under {DATA / 'midi'} to train BPE on")
    tokenizer.train(vocab_size=len(tokenizer.vocab) + 10, files_paths=files)
    return tokenizer


UNSUPPORTED = {
    "chords": lambda: miditok.REMI(miditok.TokenizerConfig(use_chords=True)),
    "rests": lambda: miditok.TSD(miditok.TokenizerConfig(use_rests=True)),
    "pitch_bends": lambda: miditok.TSD(miditok.TokenizerConfig(use_pitch_bends=True)),
    "sustain_pedals": lambda: miditok.REMI(miditok.TokenizerConfig(use_sustain_pedals=True)),
    "key_signatures": lambda: miditok.REMI(miditok.TokenizerConfig(use_key_signatures=True)),
    "program_changes": lambda: miditok.REMI(miditok.TokenizerConfig(use_programs=True, program_changes=True)),
    "bar_end_tokens": lambda: miditok.REMI(miditok.TokenizerConfig(use_bar_end_tokens=True)),
    "max_bar_embedding": lambda: miditok.REMI(miditok.TokenizerConfig(max_bar_embedding=300)),
    "trailing_bars": lambda: miditok.REMI(miditok.TokenizerConfig(add_trailing_bars=True)),
    "bpe_trained": _trained_remi,
    "cpword_rests": lambda: miditok.CPWord(miditok.TokenizerConfig(use_rests=True, use_time_signatures=False)),
    "cpword_chords": lambda: miditok.CPWord(miditok.TokenizerConfig(use_chords=True)),
    "mumidi": lambda: miditok.MuMIDI(),
    "mmm_rests": lambda: miditok.MMM(miditok.TokenizerConfig(base_tokenizer="REMI", use_rests=True)),
    "mmm_chords": lambda: miditok.MMM(miditok.TokenizerConfig(base_tokenizer="TSD", use_chords=True)),
    "midilike_rests": lambda: miditok.MIDILike(miditok.TokenizerConfig(use_rests=True)),
    "remi_subclass": lambda: _CustomREMI(),
}


@pytest.mark.parametrize("case", sorted(UNSUPPORTED))
def test_unsupported_configs_are_refused(case):
    tokenizer = UNSUPPORTED[case]()
    assert not fastpath.supports(tokenizer)
    with pytest.raises(ValueError, match="does not support"):
        fastpath.FastTokenizer(tokenizer)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_presets_are_supported(scheme):
    assert fastpath.supports(fastpath.make_tokenizer(scheme))


def test_unknown_scheme_names_the_accepted_ones():
    with pytest.raises(ValueError, match="'remy'.*remi, tsd, midilike, structured, cpword, octuple.*mmm"):
        fastpath.make_tokenizer("remy")


def _corrupt_files() -> tuple[list[tuple[str, object]], list[Path]]:
    """Files of ``corrupt/`` split into (parseable name, Score) and unparseable paths."""
    parsed, unparseable = [], []
    for path in sorted((DATA / "corrupt").glob("*")):
        try:
            parsed.append((path.name, symusic.Score(str(path))))
        except (RuntimeError, ValueError, OSError, EOFError):
            unparseable.append(path)
    return parsed, unparseable


@pytest.mark.parametrize("scheme", SCHEMES)
def test_malformed_but_parseable_files_behave_like_miditok(scheme, real_scores):
    """Same ids, or the same exception type (e.g. a zero ticks/quarter division)."""
    tokenizer = fastpath.make_tokenizer(scheme)
    fast = fastpath.FastTokenizer(tokenizer)
    parsed, _ = _corrupt_files()
    for name, score in parsed:
        try:
            expected = fastpath.miditok_ids(tokenizer.encode(score))
        except Exception as err:  # noqa: BLE001 - the fast path must raise the same
            with pytest.raises(type(err)):
                fast.encode_ids(score)
            continue
        assert fast.encode_ids(score) == expected, name


def test_bench_reports_identical_ids(real_scores):
    _, unparseable = _corrupt_files()
    paths = [DATA / name for name, _ in real_scores[:3]] + unparseable[:1]
    result = fastpath.bench(paths, "remi")
    assert result["files"] == 3
    assert result["unparseable"] == len(unparseable[:1])
    assert result["identical_fraction"] == 1.0
    assert result["miditok_ms_per_file"] > 0 and result["fast_ms_per_file"] > 0


def test_octuple_clips_long_pieces_with_miditok_warning(real_scores):
    """Past ``max_bar_embedding`` bars miditok clips the piece and warns (the stage rejects
    on that warning): the fast path gives the clipped ids and the same warning."""
    import warnings

    tokenizer = miditok.Octuple(miditok.TokenizerConfig(max_bar_embedding=20))
    fast = fastpath.FastTokenizer(tokenizer)
    long = [(n, s) for n, s in real_scores if len(s.tracks) > 0][::10]
    clipped = 0
    for name, score in long:
        with warnings.catch_warnings(record=True) as ref_warnings:
            warnings.simplefilter("always")
            expected = fastpath.miditok_ids(tokenizer.encode(score))
        with warnings.catch_warnings(record=True) as fast_warnings:
            warnings.simplefilter("always")
            got = fast.encode_ids(score)
        ref = [str(w.message) for w in ref_warnings if "cannot tokenize entirely" in str(w.message)]
        assert [str(w.message) for w in fast_warnings if "cannot tokenize entirely" in str(w.message)] == ref, name
        assert got == expected, name
        clipped += bool(ref)
    assert clipped > 0, "some real piece should pass 20 bars"
    assert fast.fallbacks == 0


MMM_CONFIGS = {
    "tsd-tempos": {"base_tokenizer": "TSD", "use_tempos": True},
    "midilike-no-timesigs": {"base_tokenizer": "MIDILike", "use_time_signatures": False, "use_tempos": True},
    "remi-beat_res-vel8": {"base_tokenizer": "REMI", "beat_res": {(0, 2): 12, (2, 8): 4}, "num_velocities": 8},
}


@pytest.mark.parametrize("config_name", sorted(MMM_CONFIGS))
def test_mmm_over_each_base_gives_miditok_ids(config_name, real_scores):
    tokenizer = miditok.MMM(miditok.TokenizerConfig(**MMM_CONFIGS[config_name]))
    assert fastpath.supports(tokenizer)
    _assert_identical(tokenizer, SYNTHETIC[:60] + real_scores[::4])


def _bar_starts_both_ways(tok, fast, real_scores, compare: str):
    """(name, score, encode_piece_bars through the fast path) for ~60 real files miditok encodes,
    after asserting that miditok's path gives the same ids (``compare``: "ids", or "multi" for the
    multi-vocabulary ids) and bar starts."""
    from corpus.tokenize import stage

    for name, score in real_scores[:: max(1, len(real_scores) // 60)]:
        try:
            want = stage.encode_piece_bars(tok, None, score)
        except Exception:  # noqa: BLE001 - miditok refuses it: the stage rejects it, nothing to compare
            continue
        got = stage.encode_piece_bars(tok, fast, score)
        same = got[1] == want[1] if compare == "multi" else list(got[0]) == list(want[0])
        assert same and got[3] == want[3], name
        yield name, score, got


@pytest.mark.parametrize("scheme", ["cpword", "octuple", "mumidi"])
def test_multi_voc_bar_starts_match_miditok_path(scheme, real_scores):
    """CPWord / Octuple bar starts (corpus.tokenize.bars) are the same through the fast path and
    miditok's own encoder, and each lands on a bar line: a CPWord or MuMIDI ``Bar`` token (MuMIDI
    has no fast path: miditok's ids only), or the first Octuple token whose bar number reaches the
    bar (the one before it is of an earlier bar)."""
    from corpus.tokenize import presets

    tok, _ = presets.build(scheme)
    fast = fastpath.FastTokenizer(tok) if fastpath.supports(tok) else None
    slot = tok.vocab_types_idx["Bar"]
    names = {i: n for n, i in tok.vocab[slot].items()}
    checked = 0
    for name, score, got in _bar_starts_both_ways(tok, fast, real_scores, "multi"):
        for seq, starts in zip(tok.encode(score) if not tok.one_token_stream else [tok.encode(score)], got[3]):
            bar = [names[t[slot]] for t in seq.ids]
            for k, i in enumerate(starts):
                if i == len(bar):
                    continue
                if scheme in ("cpword", "mumidi"):
                    assert bar[i] == "Bar_None" and sum(b == "Bar_None" for b in bar[:i]) == k, (name, k)
                else:
                    assert int(bar[i][4:]) >= k and (
                        i == 0 or not bar[i - 1].startswith("Bar_") or int(bar[i - 1][4:]) < k
                    )
            checked += 1
    assert checked > 30


STRUCTURED_CONFIGS = {
    "preset": None,  # the pipeline's structured preset: one sequence per track
    "one-stream": {"use_programs": True, "one_token_stream_for_programs": True},
}


@pytest.mark.parametrize("config_name", sorted(STRUCTURED_CONFIGS))
def test_structured_bar_starts_match_miditok_path_and_lie_on_bar_lines(config_name, real_scores):
    """Structured bar starts are the same through the fast path and miditok's encoder, and bar k
    starts at the TimeShift of the first note whose decoded onset (the sum of the shifts, as
    miditok decodes) is at or after k 4/4 bars: the note before it is earlier."""
    from corpus.tokenize import presets

    cfg = STRUCTURED_CONFIGS[config_name]
    tok = presets.build("structured")[0] if cfg is None else miditok.Structured(miditok.TokenizerConfig(**cfg))
    fast = fastpath.FastTokenizer(tok)
    bar = 4 * tok.time_division
    names = {i: n for n, i in tok.vocab.items()}
    checked = 0
    for name, _score, got in _bar_starts_both_ways(tok, fast, real_scores, "ids"):
        assert len({len(b) for b in got[3]}) <= 1  # every sequence gets the piece's bars
        flat, pos = list(got[0]), 0
        for n, starts in zip(got[2], got[3], strict=True):
            seq, pos = flat[pos : pos + n], pos + n
            # decoded onset of each token's note, written out from the token strings
            onset, at = [], 0
            for t in seq:
                tname = names[t]
                if tname.startswith("TimeShift_"):
                    b, p, r = map(int, tname[10:].split("."))
                    at += 0 if tname == "TimeShift_0.0.1" else (b * r + p) * tok.time_division // r
                onset.append(at)
            for k, i in enumerate(starts):
                if i == len(seq):
                    assert not onset or onset[-1] < k * bar, (name, k)
                    continue
                assert names[seq[i]].startswith("TimeShift_") and onset[i] >= k * bar, (name, k)
                assert i == 0 or onset[i - 1] < k * bar, (name, k)
            checked += 1
    assert checked > 30


def test_mmm_bar_starts_match_miditok_path_per_track_block(real_scores):
    """MMM (the preset, over REMI): the fast path and miditok give the same bar starts, one list per
    track block: the k-th Bar token of the block (its Track_End for the bars it lacks), then its
    Track_End; the block's header is Track_Start, Program."""
    from corpus.tokenize import presets

    tok, _ = presets.build("mmm")
    fast = fastpath.FastTokenizer(tok)
    names = {i: n for n, i in tok.vocab.items()}
    checked = 0
    for name, score, got in _bar_starts_both_ways(tok, fast, real_scores, "ids"):
        seq = [names[i] for i in got[0]]
        blocks = got[3]
        assert len(blocks) == seq.count("Track_Start") and len({len(b) for b in blocks}) == 1, name
        begin = 0
        for bl in blocks:
            end = bl[-1]
            assert seq[begin] == "Track_Start" and seq[end] == "Track_End", name
            if len(score.tracks):
                assert seq[begin + 1].startswith("Program_"), name
            bars_here = [i for i in range(begin, end) if seq[i] == "Bar_None"]
            assert bl[: len(bars_here)] == bars_here and all(x == end for x in bl[len(bars_here) :]), name
            assert bl[0] == begin + (2 if len(score.tracks) else 1) or not bars_here, name
            begin = end + 1
        assert begin == len(seq), name
        checked += 1
    assert checked > 30
