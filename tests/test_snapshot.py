"""Snapshots: content versions, byte-identical rebuilds, splits per song group, verify, plain readers."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from corpus import snapshot as S
from tests.train import DATA, build_test_lake


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory):
    if not DATA.is_dir():
        pytest.skip(f"real test data not found at {DATA} (shared/ must sit beside the repository)")
    return build_test_lake(tmp_path_factory.mktemp("snap") / "lake", ("remi_multitrack", "cpword"), augment=1)


def _create(lake, spec):
    with lake.lock():
        return S.create(lake, spec)


def test_same_selection_same_version_and_bytes(lake, tmp_path: Path) -> None:
    spec = S.SnapshotSpec("mt", "remi_multitrack", split=(0.6, 0.2, 0.2), seed=3)
    a = _create(lake, spec)
    b = _create(lake, spec)
    assert a.created and not b.created and a.version == b.version
    other = tmp_path / "again"
    m = S.build(lake, spec, other)  # a second build from scratch
    assert m["version"] == a.version
    for rel in a.manifest["files"]:
        assert (other / rel).read_bytes() == (a.path / rel).read_bytes(), rel
    assert (other / "README.md").read_bytes() == (a.path / "README.md").read_bytes()
    # a change anywhere gives a new version; the old one stays readable
    c = _create(lake, S.SnapshotSpec("mt", "remi_multitrack", split=(0.6, 0.2, 0.2), seed=4))
    assert c.version != a.version
    assert S.verify(lake, f"mt@{a.version}").ok
    assert S.resolve(lake, "mt") == c.path
    assert {r["version"] for r in S.list_snapshots(lake) if r["name"] == "mt"} == {a.version, c.version}
    rows = lake.query(
        "SELECT version, n_pieces, n_tokens FROM snapshots WHERE name = 'mt' ORDER BY version"
    ).to_pylist()
    assert {r["version"] for r in rows} == {a.version, c.version}
    assert not list((lake.root / "snapshots").glob(".build-*"))


def test_splits_follow_clusters_and_copies_stay_with_original(lake) -> None:
    r = _create(lake, S.SnapshotSpec("aug", "remi_multitrack", transpose="augment:1", split=(0.5, 0.25, 0.25)))
    con = lake.connect()
    try:
        per_cluster = con.execute(
            "SELECT f.dedup_cluster, count(DISTINCT sp.split) FROM snapshot_pieces sp JOIN features f USING (piece_id) "
            "WHERE sp.name = 'aug' AND sp.version = ? GROUP BY 1",
            [r.version],
        ).fetchall()
        per_piece = con.execute(
            "SELECT piece_id, count(DISTINCT split), count(DISTINCT transpose) FROM snapshot_pieces "
            "WHERE name = 'aug' AND version = ? GROUP BY 1",
            [r.version],
        ).fetchall()
        multi = con.execute("SELECT count(*) FROM features WHERE dedup_cluster <> piece_id").fetchone()[0]
    finally:
        con.close()
    assert multi > 0, "the test lake should hold at least one multi-piece dedup cluster"
    assert all(n == 1 for _, n in per_cluster)
    assert all(ns == 1 for _, ns, _ in per_piece)
    assert max(nt for _, _, nt in per_piece) == 3  # -1, 0, +1 together
    assert {s for s in S.SPLITS if r.manifest["counts"][s]["rows"]} == set(S.SPLITS)
    # a piece keeps its split in another version (different selection, same seed and fractions)
    r2 = _create(
        lake, S.SnapshotSpec("aug", "remi_multitrack", transpose="none", split=(0.5, 0.25, 0.25), where="n_notes > 50")
    )
    d = S.diff(lake, f"aug@{r.version}", f"aug@{r2.version}")
    assert d["rows_moved_split"] == [] and d["tokens_removed"] > 0 and d["rows_added"] == []
    assert S.split_of("cluster:x", 0, (0.9, 0.05, 0.05)) == S.split_of("cluster:x", 0, (0.9, 0.05, 0.05))


def test_song_groups_union_msd_and_clusters() -> None:
    g = S.song_groups(
        {"a": ["cluster:a", "msd:TR1"], "b": ["cluster:b", "msd:TR1"], "c": ["cluster:a"], "d": ["cluster:d"]}
    )
    assert g["a"] == g["b"] == g["c"] == "msd:TR1" and g["d"] == "cluster:d"


def test_shards_readable_with_numpy_and_pyarrow_only(lake) -> None:
    r = _create(lake, S.SnapshotSpec("plain", "remi_multitrack", split=(0.6, 0.2, 0.2), max_seq_len=500))
    tok = np.load(r.path / "train" / "tokens.npy", mmap_mode="r")
    idx = np.load(r.path / "train" / "index.npy")
    meta = pq.read_table(r.path / "train" / "sequences.parquet").to_pydict()
    assert tok.ndim == 1 and idx[0] == 0 and idx[-1] == len(tok) and len(meta["seq"]) == len(idx) - 1
    assert int(np.diff(idx).max()) <= 500
    pid = meta["piece_id"][0]
    whole = np.concatenate([tok[idx[i] : idx[i + 1]] for i, p in enumerate(meta["piece_id"]) if p == pid])
    ids = lake.query(
        "SELECT ids FROM tokens WHERE scheme = 'remi_multitrack' AND piece_id = ? AND transpose = 0", [pid]
    ).to_pylist()[0]["ids"]
    assert whole.tolist() == ids
    manifest = json.loads((r.path / "manifest.json").read_text())
    assert manifest["counts"]["train"]["tokens"] == len(tok)
    assert (
        manifest["source_tables"]["tokens"]
        and manifest["tokenizer"]["hash"]
        and manifest["library_versions"]["miditok"]
    )
    import miditok

    doc = json.loads((r.path / "tokenizer.json").read_text())
    assert (
        len(getattr(miditok, doc["tokenization"])(params=r.path / "tokenizer.json"))
        == manifest["tokenizer"]["vocab_size"]
    )
    card = S.show(lake, f"plain@{r.version}")
    assert "Apache-2.0" in card and "MIT" in card and "attribution" in card.lower()


def test_multi_vocab_shards_are_2d(lake) -> None:
    r = _create(lake, S.SnapshotSpec("cp", "cpword", split=(0.6, 0.2, 0.2)))
    tok = np.load(r.path / "train" / "tokens.npy", mmap_mode="r")
    assert tok.ndim == 2 and tok.shape[1] == len(r.manifest["tokenizer"]["vocab_sizes"])
    assert (np.asarray(tok).max(axis=0) < np.asarray(r.manifest["tokenizer"]["vocab_sizes"])).all()


def test_verify_detects_tampering(lake) -> None:
    r = _create(lake, S.SnapshotSpec("tamper", "remi_multitrack", split=(0.6, 0.2, 0.2), where="source = 'magenta'"))
    assert S.verify(lake, "tamper").ok
    f = r.path / "train" / "tokens.npy"
    data = bytearray(f.read_bytes())
    data[-1] ^= 1
    os.chmod(f, 0o644)
    f.write_bytes(bytes(data))
    v = S.verify(lake, "tamper")
    assert not v.ok and v.problems == ["train/tokens.npy sha256 differs from the manifest"]
    (r.path / "valid" / "index.npy").unlink()
    assert "valid/index.npy is missing" in S.verify(lake, "tamper").problems


def test_killed_build_leaves_nothing_visible(lake) -> None:
    stale = lake.root / "snapshots" / ".build-deadbeef"
    (stale / "train").mkdir(parents=True)
    (stale / "manifest.json").write_text("{}")
    assert all(not r["path"].startswith(str(stale)) for r in S.list_snapshots(lake))
    _create(lake, S.SnapshotSpec("after", "remi_multitrack", where="source = 'magenta'"))
    assert not stale.exists()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (S.SnapshotSpec("bad/name", "remi_multitrack"), "snapshot name"),
        (S.SnapshotSpec("x", "remi_multitrack", split=(0.5, 0.5, 0.5)), "sum to 1"),
        (S.SnapshotSpec("x", "remi_multitrack", transpose="augment:40"), "--transpose"),
        (S.SnapshotSpec("x", "no_such_scheme"), "no tokens for scheme 'no_such_scheme'"),
        (S.SnapshotSpec("x", "remi_multitrack", where="no_such_column = 1"), "--where"),
    ],
    ids=["name", "split", "transpose", "scheme", "where"],
)
def test_bad_input_is_one_clear_error(lake, spec, message) -> None:
    with pytest.raises(S.SnapshotError, match=message):
        _create(lake, spec)
    with pytest.raises(S.SnapshotError, match="no snapshot named"):
        S.resolve(lake, "nope")


def test_streamed_tokens_are_the_bytes_of_np_save(tmp_path: Path) -> None:
    import io

    rng = np.random.default_rng(0)
    rows = [rng.integers(0, 300, size=int(n)).tolist() for n in rng.integers(0, 5000, size=40)]
    col = pa.array(rows, pa.list_(pa.int32()))
    batches = [col.slice(i, 7) for i in range(0, len(rows), 7)]  # several batches, the last one short
    total = sum(len(r) for r in rows)
    meta = S._stream_tokens(iter(batches), tmp_path / "tokens.npy", (total,), np.dtype(np.uint16), "x")
    want = io.BytesIO()
    np.save(want, np.concatenate([np.asarray(r, np.int64) for r in rows]).astype(np.uint16), allow_pickle=False)
    assert (tmp_path / "tokens.npy").read_bytes() == want.getvalue()
    assert meta["bytes"] == len(want.getvalue())
    with pytest.raises(RuntimeError, match="seq_lengths sum to"):
        S._stream_tokens(iter(batches), tmp_path / "t2.npy", (total + 1,), np.dtype(np.uint16), "x")


def _reference_files(lake, spec: S.SnapshotSpec, manifest: dict) -> dict[str, bytes]:
    """The data files of ``spec`` computed the plain way, a Python dict or list per piece, row and
    sequence (as the builder did before it kept them in columns): the bytes build() must give."""
    import io

    cols = {r["column_name"] for r in lake.query("SELECT column_name FROM (DESCRIBE pieces)").to_pylist()}
    sel = lake.query(S._selection_sql(spec.where, "mutopia_id" in cols)).to_pylist()
    keys = {
        r["piece_id"]: [f"song:{r['song_group']}", f"cluster:{r['dedup_cluster']}"]
        + [f"msd:{m}" for m in r["msd_ids"] or []]
        + [f"mutopia:{m}" for m in r["mutopia_ids"] or []]
        for r in sel
    }
    split = S.assign_splits(S.song_groups(keys), spec.seed, spec.split, {})
    of = {r["piece_id"]: r for r in sel}
    mode, k = S.transpose_shifts(spec.transpose)
    assert mode != "normalize"
    shifts = [0] if mode == "none" else list(range(-k, k + 1))
    multi = manifest["tokenizer"]["is_multi_vocab"]
    width = len(manifest["tokenizer"]["vocab_sizes"]) if multi else 1
    dtype = np.dtype(manifest["shard_format"]["dtype"])
    first: dict[tuple[str, int], dict] = {}
    for r in lake.query(
        f"SELECT piece_id, transpose, run_id, seq_lengths, {'ids_multi' if multi else 'ids'} AS ids FROM tokens "
        "WHERE scheme = ? AND tokenizer_hash = ? ORDER BY piece_id, transpose, run_id",
        [spec.scheme, manifest["tokenizer"]["hash"]],
    ).to_pylist():
        if r["piece_id"] in of and r["transpose"] in shifts:
            first.setdefault((r["piece_id"], r["transpose"]), r)
    out: dict[str, bytes] = {}
    for sp in S.SPLITS:
        seqs: dict[str, list] = {c: [] for c in ("seq", "piece_id", "transpose", "track", "chunk", "start", "length")}
        seqs |= {"song_group": [], "dedup_cluster": []}
        offsets, ids, pos = [0], [], 0
        for (pid, tr), r in sorted(first.items()):
            if split[pid] != sp:
                continue
            ids.extend(r["ids"])
            for track, length in enumerate(r["seq_lengths"] or []):
                step = spec.max_seq_len or max(length, 1)
                for chunk, s0 in enumerate(range(0, length, step)):
                    ln = min(step, length - s0)
                    for c, v in zip(seqs, (len(offsets) - 1, pid, tr, track, chunk, pos + s0, ln), strict=False):
                        seqs[c].append(v)
                    seqs["song_group"].append(of[pid]["song_group"])
                    seqs["dedup_cluster"].append(of[pid]["dedup_cluster"])
                    offsets.append(pos + s0 + ln)
                pos += length
        tokens = np.asarray(ids, dtype=np.int64).reshape((-1, width) if multi else (-1,)).astype(dtype)
        for rel, arr in (("tokens", tokens), ("index", np.asarray(offsets, dtype=np.int64))):
            buf = io.BytesIO()
            np.save(buf, arr, allow_pickle=False)
            out[f"{sp}/{rel}.npy"] = buf.getvalue()
        types = [pa.int64(), pa.string(), pa.int32(), pa.int32(), pa.int32(), pa.int64(), pa.int64()]
        tbl = pa.table({c: pa.array(v, t) for (c, v), t in zip(seqs.items(), [*types, pa.string(), pa.string()])})
        buf = io.BytesIO()
        pq.write_table(tbl, buf, compression="zstd")
        out[f"{sp}/sequences.parquet"] = buf.getvalue()
    lines = ["piece_id\tsplit\tsources\tlicenses\tsource_uri\tterms"]
    for r in sel:
        if any(p == r["piece_id"] for p, _ in first):
            lics = r["licenses"]
            terms = " | ".join(S.license_terms(x) for x in lics)
            lines.append(
                "\t".join([r["piece_id"], split[r["piece_id"]], ",".join(r["sources"]), ",".join(lics)])
                + f"\t{r['source_uri'] or ''}\t{terms}"
            )
    out["ATTRIBUTION.tsv"] = ("\n".join(lines) + "\n").encode()
    return out


@pytest.mark.parametrize(
    "spec",
    [
        S.SnapshotSpec(
            "ref", "remi_multitrack", transpose="augment:1", max_seq_len=300, split=(0.5, 0.25, 0.25), seed=5
        ),
        S.SnapshotSpec("ref", "remi_multitrack", where="n_notes > 50", split=(0.4, 0.3, 0.3), seed=2),
        S.SnapshotSpec("ref", "cpword", max_seq_len=97, split=(0.6, 0.2, 0.2)),
    ],
    ids=["augment-max_seq_len", "where-whole", "cpword"],
)
def test_build_gives_the_bytes_of_a_plain_per_piece_computation(lake, tmp_path: Path, spec) -> None:
    m = S.build(lake, spec, tmp_path / "b")
    want = _reference_files(lake, spec, m)
    # the Hugging Face files hold the same sequences (tests/test_snapshot_hf.py compares them)
    assert sorted(want) == sorted(r for r in m["files"] if r != "tokenizer.json" and not r.endswith(S.hf.HF_FILE))
    for rel, blob in want.items():
        assert (tmp_path / "b" / rel).read_bytes() == blob, rel
        assert m["files"][rel]["sha256"] == hashlib.sha256(blob).hexdigest()


def test_columnar_song_groups_and_splits_match_the_per_piece_functions() -> None:
    rng = np.random.default_rng(1)
    n = 400
    pieces = [f"p{i:04d}" for i in range(n)]
    sel = pa.table(
        {
            "piece_id": pieces,
            "song_group": [None if i % 37 == 0 else f"g{rng.integers(0, 150)}" for i in range(n)],
            "dedup_cluster": [f"p{rng.integers(0, n):04d}" for _ in range(n)],
            "msd_ids": [
                None if i % 3 else [f"TR{rng.integers(0, 60)}" for _ in range(rng.integers(0, 3))] for i in range(n)
            ],
            "mutopia_ids": [[f"{rng.integers(0, 40)}"] if i % 5 == 0 else [] for i in range(n)],
        }
    )
    keys = {
        r["piece_id"]: [f"song:{r['song_group']}", f"cluster:{r['dedup_cluster']}"]
        + [f"msd:{m}" for m in r["msd_ids"] or []]
        + [f"mutopia:{m}" for m in r["mutopia_ids"] or []]
        for r in sel.to_pylist()
    }
    units = S.song_groups(keys)
    got = S._unit_keys(sel).to_pylist()
    assert got == [units[p] for p in pieces]
    assert len(set(got)) > 10
    fractions = (0.5, 0.3, 0.2)
    prev = {p: S.SPLITS[int(rng.integers(0, 3))] for p in pieces[::3]} | {"gone": "test"}
    want = S.assign_splits(units, 4, fractions, prev)
    prev_tbl = pa.table({"piece_id": list(prev), "split": list(prev.values())})
    codes, hashed = S._split_codes(pa.array(got), 4, fractions, pa.array(pieces), prev_tbl)
    assert [S.SPLITS[c] for c in codes] == [want[p] for p in pieces]
    assert [S.SPLITS[c] for c in hashed] == [S.assign_splits(units, 4, fractions, {})[p] for p in pieces]


def test_token_batches_are_capped_by_rows_and_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(S, "STREAM_BATCH_ROWS", 4)
    monkeypatch.setattr(S, "STREAM_BATCH_TOKENS", 100)
    sizes = [30, 30, 30, 30, 500, 10, 10, 10, 10, 10, 90, 20]
    got = list(S._batch_bounds(pa.array(sizes, pa.int64()), len(sizes)))
    assert got == [(0, 3), (3, 1), (4, 1), (5, 4), (9, 2), (11, 1)]
    # contiguous, every row once; a row over the cap alone
    assert [i for i, n in got for i in range(i, i + n)] == list(range(len(sizes)))


def test_smaller_token_batches_write_the_same_bytes(lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = S.SnapshotSpec("b", "remi_multitrack", transpose="augment:1")
    want = S.build(lake, spec, tmp_path / "a")
    monkeypatch.setattr(S, "STREAM_BATCH_TOKENS", 5_000)
    got = S.build(lake, spec, tmp_path / "b")
    assert got["version"] == want["version"] and got["files"] == want["files"]


def test_the_card_says_which_pieces_the_scheme_loses_and_why(lake) -> None:
    """Structured rejects pieces by design (its TimeShift cap): the manifest counts the selected
    pieces' tokenize rejects per reason, and the card lists them with their detail and the
    scheme's by-design losses."""
    from corpus.engine import Engine
    from corpus.tokenize import presets
    from corpus.tokenize.stage import tokenize

    with lake.lock(), Engine(workers=0) as e:
        tokenize(lake, e, ["structured"])
    rejects = lake.query(
        "SELECT piece_id, reason, detail FROM rejects WHERE stage = 'tokenize' AND scheme = 'structured' "
        "AND piece_id IN (SELECT piece_id FROM features WHERE texture IS NOT NULL)"
    ).to_pylist()
    assert sum(r["reason"] == "lossy_encoding" for r in rejects) >= 3
    r = _create(lake, S.SnapshotSpec("st", "structured"))
    tr = r.manifest["tokenize_rejects"]
    want: dict[str, int] = {}
    for x in rejects:
        want[x["reason"]] = want.get(x["reason"], 0) + 1
    assert tr["by_reason"] == want
    assert {x["piece_id"] for x in tr["pieces"]} == {x["piece_id"] for x in rejects}
    assert tr["by_design"] == presets.PRESETS["structured"].loses
    card = (r.path / "README.md").read_text()
    assert "## What this scheme loses" in card and presets.PRESETS["structured"].loses in card
    for x in rejects:
        assert x["piece_id"] in card
    assert "TimeShift cap" in card  # the detail names the cause
    plain = _create(lake, S.SnapshotSpec("plain", "remi_multitrack"))
    assert plain.manifest["tokenize_rejects"]["by_reason"] == {}
    assert "What this scheme loses" not in (plain.path / "README.md").read_text()


def test_where_filters_on_expressive_and_roles(lake) -> None:
    """``--where`` reads the curate decisions: piece columns of ``features`` and, through a subquery,
    the track roles of ``tracks``."""
    where = "expressive = 'quantized' AND piece_id IN (SELECT piece_id FROM tracks WHERE role = 'melody')"
    r = _create(lake, S.SnapshotSpec("quantized-melodic", "remi_multitrack", split=(0.6, 0.2, 0.2), where=where))
    got = {
        row["piece_id"]
        for row in lake.query(
            "SELECT piece_id FROM snapshot_pieces WHERE name = 'quantized-melodic' AND version = ?", [r.version]
        ).to_pylist()
    }
    want = {
        row["piece_id"]
        for row in lake.query(
            "SELECT DISTINCT f.piece_id FROM features f JOIN tracks t USING (piece_id) JOIN tokens k USING (piece_id) "
            "WHERE f.expressive = 'quantized' AND t.role = 'melody' AND k.scheme = 'remi_multitrack'"
        ).to_pylist()
    }
    (n_all,) = lake.query("SELECT count(DISTINCT piece_id) AS n FROM tokens").to_pylist()[0].values()
    assert got and got == want and len(got) < n_all


def test_build_does_not_load_miditok_or_torch_in_the_driver(lake, tmp_path: Path) -> None:
    """The tokenizer is read in a child process: a fresh driver that builds a snapshot never imports
    miditok (which imports torch, ~200 MB), and writes the same files as a build in this process."""
    import subprocess
    import sys

    spec = S.SnapshotSpec("child", "cpword", transpose="augment:1")
    want = S.build(lake, spec, tmp_path / "a")
    code = (
        "import json, sys\n"
        "from corpus.lake import Lake\n"
        "from corpus import snapshot as S\n"
        f"m = S.build(Lake({str(lake.root)!r}), S.SnapshotSpec('child', 'cpword', transpose='augment:1'), "
        f"__import__('pathlib').Path({str(tmp_path / 'b')!r}))\n"
        "print(json.dumps({'loaded': [n for n in ('miditok', 'torch') if n in sys.modules], 'files': m['files'], "
        "'version': m['version']}))\n"
    )
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ)
    out = json.loads(got.stdout.strip().splitlines()[-1])
    assert out["loaded"] == []
    assert out["version"] == want["version"] and out["files"] == want["files"]


@pytest.mark.parametrize("scheme", ["remi_multitrack", "cpword"])
def test_tokenizer_facts_from_the_child_are_those_of_the_tokenizer(lake, scheme: str) -> None:
    from corpus.tokenize import presets

    con = lake.connect()
    try:
        config = S._resolve_tokenizer(con, scheme, None)["config_json"]
    finally:
        con.close()
    _, specials, sizes, _ = S._tokenizer_facts(config)
    tok, _ = presets.load_from_text(config)
    vocabs = tok.vocab if tok.is_multi_voc else [tok.vocab]
    assert sizes == [len(v) for v in vocabs]
    for name, ids in specials.items():
        assert (ids if tok.is_multi_voc else [ids]) == [v[f"{name}_None"] for v in vocabs]
    assert "PAD" in specials


def test_a_broken_tokenizer_config_is_one_clear_error() -> None:
    with pytest.raises(S.SnapshotError, match="tokenizer of this snapshot cannot be loaded"):
        S._tokenizer_facts('{"config": {"not": "a tokenizer"}}')
