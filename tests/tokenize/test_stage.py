"""The tokenize stage over a small lake of real files: every scheme, round trips, incremental runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from corpus.curate import curate
from corpus.engine import Engine
from corpus.ingest import IngestConfig, ingest
from corpus.lake import Lake
from corpus.sources.folder import DirSource
from corpus.sources.lakh import LakhSource
from corpus.tokenize import presets, roundtrip
from corpus.tokenize.stage import TokenizeError, parse_transpose, tokenize

ALL = presets.names()


@pytest.fixture(scope="module")
def base_lake(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Lake:
    lake = Lake(tmp_path_factory.mktemp("t") / "lake")
    with lake.lock(), Engine(workers=2) as e:
        ingest(lake, LakhSource(data_dir / "lakh" / "lmd_full"), e, IngestConfig())
        ingest(lake, DirSource(data_dir / "midi" / "magenta", name="magenta"), e, IngestConfig())
        ingest(
            lake,
            DirSource(data_dir / "mutopia" / "ftp" / "BachJS" / "BWV988" / "bwv-988-v01", name="mutopia"),
            e,
            IngestConfig(),
        )
        curate(lake, e)
    return lake


@pytest.fixture(scope="module")
def tokenized(base_lake: Lake) -> tuple[Lake, object]:
    with base_lake.lock(), Engine(workers=2) as e:
        s = tokenize(base_lake, e, ALL, verify=True)
    return base_lake, s


def q(lake: Lake, sql: str, params: list | None = None) -> list[tuple]:
    con = lake.connect()
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def test_every_piece_accounted_for_in_every_scheme(tokenized: tuple[Lake, object]) -> None:
    lake, s = tokenized
    (n_pieces,) = q(lake, "SELECT count(*) FROM features")[0]
    for ss in s.schemes:
        (tok,) = q(
            lake, "SELECT count(*) FROM tokens WHERE scheme = ? AND tokenizer_hash = ?", [ss.scheme, ss.tokenizer_hash]
        )[0]
        (rej,) = q(lake, "SELECT count(*) FROM rejects WHERE stage = 'tokenize' AND scheme = ?", [ss.scheme])[0]
        assert tok + rej == n_pieces, ss.scheme
        assert tok == ss.pieces and rej == ss.rejected
    # the lossless schemes take every piece
    for scheme in ("remi", "tsd", "midilike", "cpword", "mmm", "remi_multitrack", "tsd_multitrack"):
        ss = next(x for x in s.schemes if x.scheme == scheme)
        assert ss.rejected == 0, (scheme, ss.reasons)
    # Structured cannot carry gaps longer than its time shifts: those pieces are rejected, not cut
    st = next(x for x in s.schemes if x.scheme == "structured")
    assert set(st.reasons) <= {"lossy_encoding", "no_tokens"} and st.reasons["lossy_encoding"] >= 3
    # the performance encoding (note-on/off per pitch, tracks merged) loses overlapping notes
    perf = next(x for x in s.schemes if x.scheme == "performance")
    assert perf.reasons.get("lossy_encoding", 0) >= 5
    # miditok's own failures are recorded with its message, not raised or dropped
    details = q(
        lake, "SELECT detail FROM rejects WHERE stage = 'tokenize' AND scheme = 'mumidi' AND reason = 'tokenize_error'"
    )
    assert all(d[0] for d in details)


def test_tokens_round_trip_to_the_notes(tokenized: tuple[Lake, object], data_dir: Path) -> None:
    """Tokens read back from the lake decode, through the saved tokenizer.json, to the notes."""
    import symusic

    from corpus.parse import check_structure

    lake, s = tokenized
    for ss in s.schemes:
        tok = presets.from_json(lake.root / "tokenizers" / ss.tokenizer_hash / "tokenizer.json")
        transform = presets.PRESETS[ss.scheme].transform
        rows = q(
            lake,
            "SELECT piece_id, ids, ids_multi, seq_lengths FROM tokens WHERE scheme = ? ORDER BY piece_id",
            [ss.scheme],
        )
        assert rows, ss.scheme
        for pid, ids, multi, lengths in rows:
            score = presets.apply_transform(symusic.Score.from_midi(check_structure(lake.get_raw(pid))[0]), transform)
            assert roundtrip.check(tok, score, ids or [], multi, lengths) == 1.0, (ss.scheme, pid)


def test_multi_vocab_stored_one_list_per_token(tokenized: tuple[Lake, object]) -> None:
    lake, _ = tokenized
    for scheme, width in (("cpword", 6), ("octuple", 6), ("mumidi", None)):
        rows = q(lake, "SELECT ids, ids_multi, n_tokens, seq_lengths FROM tokens WHERE scheme = ? LIMIT 3", [scheme])
        assert rows
        for ids, multi, n, lengths in rows:
            assert ids is None and len(multi) == n == sum(lengths)
            if width is not None:  # MuMIDI's tokens carry a varying number of sub-tokens
                assert {len(t) for t in multi} == {width}


def test_second_run_does_nothing(tokenized: tuple[Lake, object]) -> None:
    lake, _ = tokenized
    commits = len(lake.commits())
    with lake.lock(), Engine(workers=1) as e:
        s = tokenize(lake, e, ALL, verify=True)
    assert s.done == 0 and len(lake.commits()) == commits
    assert "nothing to do" in s.lines()[-1]


def test_one_and_two_workers_give_identical_ids(base_lake: Lake, tmp_path: Path) -> None:
    import shutil

    copies = []
    for workers in (1, 2):
        dst = tmp_path / f"w{workers}"
        shutil.copytree(base_lake.root, dst)
        lake = Lake(dst)
        with lake.lock(), Engine(workers=workers) as e:
            tokenize(lake, e, ["tsd", "octuple"], transpose="augment:1", batch_size=3 if workers == 1 else 2)
        copies.append(
            q(lake, "SELECT scheme, tokenizer_hash, piece_id, transpose, ids, ids_multi FROM tokens ORDER BY ALL")
        )
    assert copies[0] == copies[1] and len(copies[0]) > 30


def test_transposition_normalize_and_augment(base_lake: Lake, tmp_path: Path) -> None:
    import shutil

    dst = tmp_path / "tr"
    shutil.copytree(base_lake.root, dst)
    lake = Lake(dst)
    with lake.lock(), Engine(workers=1) as e:
        tokenize(lake, e, ["remi_multitrack"], transpose="normalize", min_key_confidence=0.0)
        tokenize(lake, e, ["remi_multitrack"], transpose="augment:2")
    rows = q(lake, "SELECT piece_id, list(transpose ORDER BY transpose) FROM tokens GROUP BY piece_id")
    assert rows
    for _pid, shifts in rows:
        assert set(shifts) <= {-6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5}
        assert {-2, -1, 0, 1, 2} <= set(shifts) | set(
            r[0] for r in q(lake, "SELECT transpose FROM rejects WHERE piece_id = ? AND stage = 'tokenize'", [_pid])
        )
    # the normalized copy really is in C major / A minor
    (pid, shift) = q(
        lake,
        "SELECT t.piece_id, t.transpose FROM tokens t JOIN features f USING (piece_id) "
        "WHERE f.key_mode = 'major' AND f.key_tonic_pc = 7 LIMIT 1",
    )[0] or (None, None)
    assert shift in (5, -7 + 12, -7) or shift == 0 or pid is not None


def test_changed_config_is_a_new_partition(base_lake: Lake, tmp_path: Path) -> None:
    import json
    import shutil

    dst = tmp_path / "cfg"
    shutil.copytree(base_lake.root, dst)
    lake = Lake(dst)
    tok, _ = presets.build("remi")
    tok.config.additional_params["midicorpus_note"] = "any change"
    d = tmp_path / "tok"
    tok.save(d)
    with lake.lock(), Engine(workers=1) as e:
        a = tokenize(lake, e, ["remi"])
        b = tokenize(lake, e, ["remi_custom"], config_file=str(d / "tokenizer.json"))
    assert a.schemes[0].tokenizer_hash != b.schemes[0].tokenizer_hash
    hashes = q(lake, "SELECT DISTINCT tokenizer_hash FROM tokens WHERE scheme IN ('remi', 'remi_custom')")
    assert len(hashes) == 2
    saved = json.loads((lake.root / "tokenizers" / b.schemes[0].tokenizer_hash / "tokenizer.json").read_text())
    assert saved["tokenization"] == "REMI" and saved["miditok_version"]


def test_bad_transpose_and_scheme() -> None:
    with pytest.raises(TokenizeError):
        parse_transpose("augment:0")
    with pytest.raises(TokenizeError):
        parse_transpose("sideways")
    with pytest.raises(presets.PresetError):
        presets.build("bpe9000")


@pytest.mark.parametrize("scheme", ["remi", "tsd_multitrack"])
def test_trained_vocabulary_is_encoded_in_one_batch_with_miditok_ids(scheme: str, data_dir: Path) -> None:
    """tokenize_batch's batched subword encode gives tok.encode's ids piece by piece."""
    import warnings

    import symusic

    from corpus.parse import Reject, analyse
    from corpus.tokenize.stage import tokenize_batch
    from tests.conftest import midi_files

    files = []
    for path in midi_files(data_dir / "midi" / "magenta") + midi_files(data_dir / "lakh" / "lmd_full")[:6]:
        try:
            analyse(path.read_bytes())
        except Reject:
            continue
        files.append(path)
    tok, _ = presets.build(scheme)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tok.train(vocab_size=len(tok.vocab) + 60, model="BPE", files_paths=files[:4])
    text = presets.tokenizer_json(tok, None)
    batch = [(p.name, p.read_bytes(), [0]) for p in files]
    got = tokenize_batch(batch, text, presets.tokenizer_hash(text), 0, 127)
    assert len(got) == len(files) > 5
    merged = 0
    for (pid, _sh, res), path in zip(got, files, strict=True):
        assert res[0] == "ok", (pid, res)
        _, ids, multi, lengths, bar_starts = res
        assert bar_starts is None  # a trained vocabulary merges tokens across bar lines
        expected = tok.encode(symusic.Score.from_midi(path.read_bytes()))
        seqs = [expected] if not isinstance(expected, list) else expected
        assert multi is None and lengths == [len(s.ids) for s in seqs], pid
        assert list(ids) == [i for s in seqs for i in s.ids], pid
        merged += sum(len(s.tokens) for s in seqs) > sum(lengths)  # the merges did something
    assert merged >= 1
