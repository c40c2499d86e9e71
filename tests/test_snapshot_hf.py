"""Snapshots opened with Hugging Face ``datasets``: the rows equal the npy shards, the MIDI column,
same recipe same bytes, verify covers the Parquet files."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from corpus import snapshot as S
from corpus import snapshot_hf as H
from tests.train import DATA, build_test_lake

datasets = pytest.importorskip("datasets")


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory):
    if not DATA.is_dir():
        pytest.skip(f"real test data not found at {DATA} (shared/ must sit beside the repository)")
    return build_test_lake(tmp_path_factory.mktemp("snaphf") / "lake", ("remi_multitrack", "cpword"), augment=1)


def _create(lake, spec):
    with lake.lock():
        return S.create(lake, spec)


def _load(path: Path, cache: Path):
    return datasets.load_dataset(str(path), cache_dir=str(cache))


@pytest.mark.parametrize(
    ("spec", "rows_per_group"),
    [
        (S.SnapshotSpec("hf1", "remi_multitrack", transpose="augment:1", max_seq_len=300, split=(0.6, 0.2, 0.2)), 7),
        (S.SnapshotSpec("hf2", "cpword", max_seq_len=97, split=(0.6, 0.2, 0.2)), H.ROW_GROUP_ROWS),
    ],
    ids=["remi_multitrack-augment", "cpword-multi-vocab"],
)
def test_load_dataset_equals_the_npy_shards(lake, tmp_path: Path, monkeypatch, spec, rows_per_group) -> None:
    monkeypatch.setattr(H, "ROW_GROUP_ROWS", rows_per_group)  # several row groups across read batches
    r = _create(lake, spec)
    ds = _load(r.path, tmp_path / "cache")
    assert isinstance(ds, datasets.DatasetDict) and sorted(ds) == sorted(S.SPLITS)
    multi = r.manifest["tokenizer"]["is_multi_vocab"]
    assert multi == (spec.scheme == "cpword")
    attribution = {}
    for line in (r.path / "ATTRIBUTION.tsv").read_text().splitlines()[1:]:
        f = line.split("\t")
        attribution[f[0]] = (f[2], f[3])
    for sp in S.SPLITS:
        tok = np.load(r.path / sp / "tokens.npy")
        idx = np.load(r.path / sp / "index.npy")
        meta = pq.read_table(r.path / sp / "sequences.parquet").to_pydict()
        d = ds[sp]
        assert d.num_rows == len(idx) - 1 == r.manifest["counts"][sp]["sequences"]
        assert "midi" not in d.column_names
        rows = d.to_dict()
        for i in range(d.num_rows):
            assert rows["input_ids"][i] == tok[idx[i] : idx[i + 1]].tolist(), (sp, i)
        for col in ("piece_id", "transpose", "track", "chunk", "seq", "song_group", "dedup_cluster"):
            assert rows[col] == meta[col], (sp, col)
        assert [(s, lic) for s, lic in zip(rows["source"], rows["license"])] == [
            attribution[p] for p in rows["piece_id"]
        ]
    assert ds["train"].num_rows > 0 and ds["valid"].num_rows > 0
    # streaming reads the same Parquet files in place, no Arrow cache
    streamed = datasets.load_dataset(str(r.path), streaming=True)["valid"]
    assert [row["input_ids"] for row in streamed] == ds["valid"]["input_ids"]
    if multi:
        assert len(ds["train"][0]["input_ids"][0]) == len(r.manifest["tokenizer"]["vocab_sizes"])
    # the card: front matter for datasets, attribution content kept
    card = (r.path / "README.md").read_text()
    assert card.startswith("---\n") and "configs:" in card and '- "apache-2.0"' in card and '- "mit"' in card
    assert "ATTRIBUTION.tsv" in card and "## Licences and what they require" in card
    assert f"{sp}/{H.HF_FILE}" in r.manifest["files"] and r.manifest["format"] == "midicorpus-snapshot/2"


def test_midi_column_parses_to_the_pieces_notes(lake, tmp_path: Path, monkeypatch) -> None:
    import symusic

    monkeypatch.setattr(H, "ROW_GROUP_MIDI_BYTES", 300_000)  # row groups cut by MIDI bytes too

    r = _create(
        lake, S.SnapshotSpec("hfmidi", "remi_multitrack", max_seq_len=500, split=(0.6, 0.2, 0.2), with_midi=True)
    )
    assert r.manifest["selection"]["with_midi"] and r.manifest["hf"]["with_midi"]
    ds = _load(r.path, tmp_path / "cache")
    # the file each piece was ingested from (source_uri: its path under shared/data/midi)
    original = {
        p["piece_id"]: DATA / "midi" / p["source_uri"]
        for p in lake.query("SELECT piece_id, source_uri FROM pieces WHERE status = 'ok'").to_pylist()
    }
    checked = 0
    for sp in S.SPLITS:
        seen = set()
        for row in ds[sp]:
            pid, blob = row["piece_id"], row["midi"]
            if pid in seen:
                continue
            seen.add(pid)
            assert hashlib.sha256(blob).hexdigest() == pid  # the original bytes, content-addressed
            got = symusic.Score.from_midi(blob)
            want = symusic.Score(str(original[pid]))
            notes = [[(n.time, n.duration, n.pitch, n.velocity) for n in t.notes] for t in got.tracks]
            assert notes == [[(n.time, n.duration, n.pitch, n.velocity) for n in t.notes] for t in want.tracks]
            assert sum(len(t) for t in notes) > 0
            checked += 1
    assert checked == r.manifest["counts"]["pieces"]
    assert pq.ParquetFile(r.path / "train" / H.HF_FILE).metadata.num_row_groups > 1


def test_row_groups_are_capped_by_rows_tokens_and_midi_bytes(monkeypatch) -> None:
    monkeypatch.setattr(H, "ROW_GROUP_ROWS", 4)
    monkeypatch.setattr(H, "ROW_GROUP_TOKENS", 100)
    monkeypatch.setattr(H, "ROW_GROUP_MIDI_BYTES", 1000)
    lengths = np.array([30, 30, 30, 30, 500, 10, 10, 10, 10, 10, 90, 20])
    assert H.row_groups(lengths) == [(0, 3), (3, 4), (4, 5), (5, 9), (9, 11), (11, 12)]
    sizes = np.array([400, 400, 400, 5000, 1, 1, 1, 1, 1, 1, 1, 1])
    assert H.row_groups(lengths, sizes) == [(0, 2), (2, 3), (3, 4), (4, 5), (5, 9), (9, 11), (11, 12)]
    assert H.row_groups(np.array([], dtype=np.int64)) == []


def test_same_recipe_same_version_and_bytes(lake, tmp_path: Path, monkeypatch) -> None:
    spec = S.SnapshotSpec("hfsame", "cpword", transpose="none", with_midi=True, split=(0.6, 0.2, 0.2))
    a = S.build(lake, spec, tmp_path / "a")
    monkeypatch.setattr(S, "STREAM_BATCH_TOKENS", 3_000)  # other read batches, same row groups
    b = S.build(lake, spec, tmp_path / "b")
    assert a["version"] == b["version"] and a["files"] == b["files"]
    for sp in S.SPLITS:
        rel = f"{sp}/{H.HF_FILE}"
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    assert (tmp_path / "a" / "README.md").read_bytes() == (tmp_path / "b" / "README.md").read_bytes()
    # the midi column is part of the recipe: without it, another version
    c = S.build(lake, S.SnapshotSpec("hfsame", "cpword", split=(0.6, 0.2, 0.2)), tmp_path / "c")
    assert c["version"] != a["version"]
    assert "midi" not in pq.read_schema(tmp_path / "c" / "train" / H.HF_FILE).names
    assert pq.ParquetFile(tmp_path / "a" / "train" / H.HF_FILE).metadata.num_rows == a["counts"]["train"]["sequences"]


def test_verify_detects_a_tampered_hf_file(lake) -> None:
    r = _create(lake, S.SnapshotSpec("hftamper", "remi_multitrack", where="source = 'magenta'", split=(0.6, 0.2, 0.2)))
    assert S.verify(lake, "hftamper").ok
    f = r.path / "train" / H.HF_FILE
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 1
    os.chmod(f, 0o644)
    f.write_bytes(bytes(data))
    v = S.verify(lake, "hftamper")
    assert not v.ok and v.problems == [f"train/{H.HF_FILE} sha256 differs from the manifest"]


def test_front_matter_licences() -> None:
    assert H.hub_licenses(["Apache-2.0", "MIT", "MIT"]) == ["apache-2.0", "mit"]
    assert H.hub_licenses(["CC-BY-SA-4.0", "public domain", "unknown"]) == ["cc-by-sa-4.0", "other"]


def test_show_prints_the_card_without_its_front_matter() -> None:
    card = "---\nconfigs:\n- config_name: default\n---\n\n# Snapshot a@b\n\ntext\n"
    assert H.strip_front_matter(card) == "# Snapshot a@b\n\ntext\n"
    assert H.strip_front_matter("# Snapshot a@b\n") == "# Snapshot a@b\n"


def test_sequence_strings_are_built_one_row_group_at_a_time(lake, tmp_path: Path, monkeypatch) -> None:
    """While the tokens are written, a split's sequences are numbers: the Hugging Face file asks for
    the strings of one row group at a time, in order, and sequences.parquet is built once, after the
    split's tokens; the files are those of a build with the default row groups."""
    spec = S.SnapshotSpec("hfmeta", "remi_multitrack", transpose="augment:1", max_seq_len=200, split=(0.6, 0.2, 0.2))
    events: list[tuple] = []
    hf_meta, seq_table, stream = S._hf_meta, S._seq_table, S._stream_tokens

    def recording_meta(seqs, rows):
        meta = hf_meta(seqs, rows)

        def call(g0: int, g1: int):
            tbl = meta(g0, g1)
            events.append(("meta", g0, g1, tbl.num_rows, tbl.column("seq").to_pylist()))
            return tbl

        return call

    def recording_table(seqs, rows, mix):
        events.append(("table", seqs.num_rows))
        return seq_table(seqs, rows, mix)

    def recording_stream(*args, **kwargs):
        out = stream(*args, **kwargs)
        events.append(("tokens",))
        return out

    monkeypatch.setattr(H, "ROW_GROUP_ROWS", 5)
    monkeypatch.setattr(S, "_hf_meta", recording_meta)
    monkeypatch.setattr(S, "_seq_table", recording_table)
    monkeypatch.setattr(S, "_stream_tokens", recording_stream)
    m = S.build(lake, spec, tmp_path / "small")
    per_split: list[list[tuple]] = [[]]
    for e in events:
        per_split[-1].append(e)
        if e[0] == "table":
            per_split.append([])
    assert per_split[-1] == [] and len(per_split) == len(S.SPLITS) + 1
    for sp, evs in zip(S.SPLITS, per_split, strict=False):
        n = m["counts"][sp]["sequences"]
        assert evs[-2:] == [("tokens",), ("table", n)]  # sequences.parquet after the tokens, once
        spans = [(e[1], e[2]) for e in evs if e[0] == "meta"]
        assert all(e[3] == e[2] - e[1] <= 5 and e[4] == list(range(e[1], e[2])) for e in evs if e[0] == "meta")
        assert [a for a, _ in spans] == [0] + [b for _, b in spans[:-1]] and spans[-1][1] == n
        assert len(spans) == pq.ParquetFile(tmp_path / "small" / sp / H.HF_FILE).metadata.num_row_groups
    monkeypatch.undo()
    whole = S.build(lake, spec, tmp_path / "default")
    for sp in S.SPLITS:  # the row groups differ, not the rows nor the other files
        assert m["files"][f"{sp}/sequences.parquet"] == whole["files"][f"{sp}/sequences.parquet"]
        assert m["files"][f"{sp}/tokens.npy"] == whole["files"][f"{sp}/tokens.npy"]
        a = pq.read_table(tmp_path / "small" / sp / H.HF_FILE)
        b = pq.read_table(tmp_path / "default" / sp / H.HF_FILE)
        assert a.equals(b)
