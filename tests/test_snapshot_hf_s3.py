"""A snapshot of an object-store lake (moto's S3 server, PostgreSQL catalog) opened with plain
Hugging Face ``datasets`` calls, no midicorpus code: the DatasetDict equals the npy shards token for
token; streaming reads the Parquet files in place, split per rank by row group with
``split_dataset_by_node`` (2 simulated ranks: every sample once per epoch), and resumes mid-epoch
from ``state_dict()`` repeating and skipping nothing."""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest

from corpus import snapshot as S
from corpus import snapshot_hf as H
from corpus.cli import main
from corpus.lake import Lake
from tests.conftest import new_pg_database, point_at_s3

datasets = pytest.importorskip("datasets")
pytest.importorskip("s3fs")

ROWS_PER_GROUP = 150  # several row groups per split from the small test corpus (the shards of a stream)


@pytest.fixture(scope="module")
def snap(s3_endpoint: str, pg_server, data_dir: Path):
    """Real files ingested, curated and tokenized through the CLI into an S3 lake; snapshot ``st``
    created there (with the MIDI column); its URL and the storage options ``datasets`` needs."""
    import boto3

    mp = pytest.MonkeyPatch()
    point_at_s3(mp, s3_endpoint)
    mp.setenv("MIDICORPUS_CATALOG", new_pg_database(pg_server))
    mp.setattr(H, "ROW_GROUP_ROWS", ROWS_PER_GROUP)
    try:
        bucket = f"hfs-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
        lake = f"s3://{bucket}/lake"
        midi = data_dir / "midi"
        for argv in (
            ["ingest", "dir", str(midi / "magenta"), "--source", "magenta", "--license", "Apache-2.0"],
            ["ingest", "dir", str(midi / "miditok"), "--source", "miditok", "--license", "MIT"],
            ["curate"],
            ["tokenize", "--scheme", "remi_multitrack"],
            ["snapshot", "create", "st", "--scheme", "remi_multitrack", "--split", "0.6,0.2,0.2"]
            + ["--max-seq-len", "256", "--with-midi"],
        ):
            assert main(["--lake", lake, "--workers", "0", *argv]) == 0, argv
        (row,) = S.list_snapshots(Lake(lake))
        manifest = json.loads(Lake(lake).read_bytes(f"snapshots/st/{row['version']}/manifest.json"))
        yield SimpleNamespace(
            lake=lake,
            url=row["path"],
            rel=f"snapshots/st/{row['version']}",
            manifest=manifest,
            # what a trainer passes: the endpoint and keys as storage options (s3fs), not the environment
            storage_options={"endpoint_url": s3_endpoint, "key": "testing", "secret": "testing"},
        )
    finally:
        mp.undo()


@pytest.fixture
def no_aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No AWS settings in the environment: ``datasets`` must get them from ``storage_options``."""
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


def _data_files(url: str) -> dict[str, str]:
    return {sp: f"{url}/{sp}/data-*.parquet" for sp in S.SPLITS}


def _stream(snap: SimpleNamespace, split: str, columns: list[str] | None = None):
    return datasets.load_dataset(
        "parquet",
        data_files=_data_files(snap.url),
        storage_options=dict(snap.storage_options),
        streaming=True,
        columns=columns,
    )[split]


def _npy(lake: Lake, rel: str) -> np.ndarray:
    return np.load(io.BytesIO(lake.read_bytes(rel)))


def test_load_dataset_from_s3_equals_the_npy_shards(snap, no_aws_env, tmp_path: Path, s3_endpoint: str) -> None:
    assert snap.url.startswith("s3://") and snap.manifest["hf"]["files"] == {sp: f"{sp}/{H.HF_FILE}" for sp in S.SPLITS}
    ds = datasets.load_dataset(
        "parquet",
        data_files=_data_files(snap.url),
        storage_options=dict(snap.storage_options),
        cache_dir=str(tmp_path / "c"),
    )
    assert isinstance(ds, datasets.DatasetDict) and sorted(ds) == sorted(S.SPLITS)
    with pytest.MonkeyPatch.context() as mp:  # the lake itself reads S3 through the environment
        point_at_s3(mp, s3_endpoint)
        lake = Lake(snap.lake)
        shards = {
            sp: (_npy(lake, f"{snap.rel}/{sp}/tokens.npy"), _npy(lake, f"{snap.rel}/{sp}/index.npy")) for sp in S.SPLITS
        }
        meta = {sp: pq.read_table(io.BytesIO(lake.read_bytes(f"{snap.rel}/{sp}/sequences.parquet"))) for sp in S.SPLITS}
    pieces = set()
    for sp in S.SPLITS:
        tok, idx = shards[sp]
        rows = ds[sp].to_dict()
        assert len(rows["input_ids"]) == len(idx) - 1 == snap.manifest["counts"][sp]["sequences"] > 0
        for i, ids in enumerate(rows["input_ids"]):
            assert ids == tok[idx[i] : idx[i + 1]].tolist(), (sp, i)
        for col in ("piece_id", "transpose", "track", "chunk", "seq", "song_group"):
            assert rows[col] == meta[sp].column(col).to_pylist(), (sp, col)
        for pid, blob in zip(rows["piece_id"], rows["midi"]):
            assert hashlib.sha256(blob).hexdigest() == pid  # the piece's original bytes, read from the bucket
            pieces.add(pid)
    assert len(pieces) == snap.manifest["counts"]["pieces"]
    # streaming gives the same rows in the same order, and downloads nothing into the cache
    streamed = datasets.load_dataset(
        "parquet",
        data_files=_data_files(snap.url),
        storage_options=dict(snap.storage_options),
        streaming=True,
        cache_dir=str(tmp_path / "s"),
    )
    assert [r["input_ids"] for r in streamed["valid"]] == ds["valid"]["input_ids"]
    assert not [p for p in (tmp_path / "s").rglob("*") if p.is_file() and p.suffix in {".parquet", ".arrow"}]


def test_the_card_and_a_local_copy_give_the_same_rows(snap, s3_endpoint: str, tmp_path: Path, monkeypatch) -> None:
    """The verified local copy of the S3 snapshot opens with ``load_dataset(<dir>)`` (the card's
    front matter) and equals what the bucket streams."""
    point_at_s3(monkeypatch, s3_endpoint)
    monkeypatch.setenv("MIDICORPUS_CACHE", str(tmp_path / "cache"))
    local = S.local_snapshot(Lake(snap.lake), "st")
    ds = datasets.load_dataset(str(local), cache_dir=str(tmp_path / "c"))
    for sp in S.SPLITS:
        assert ds[sp]["seq"] == [r["seq"] for r in _stream(snap, sp)]
    assert ds["train"]["input_ids"] == [r["input_ids"] for r in _stream(snap, "train")]
    # the card's bucket lines, run as written (the placeholders filled in), give the same rows
    card = (local / "README.md").read_text()
    code = card[card.index("# in a bucket") : card.index("```", card.index("# in a bucket"))]
    assert f"/snapshots/st/{local.name}'" in code
    code = code.replace("s3://<bucket>/<lake>", snap.lake).replace("{'endpoint_url': ...}", "opts")
    scope = {"load_dataset": datasets.load_dataset, "opts": dict(snap.storage_options)}
    exec(code, scope)
    assert scope["ds"]["valid"]["input_ids"] == ds["valid"]["input_ids"]


def _rank(snap: SimpleNamespace, split: str, rank: int, strategy: str, epoch: int = 0, shuffle: bool = False):
    """What rank ``rank`` of 2 iterates (the ``seq`` column only): the split resharded by row group
    (``set_epoch`` reorders the row groups from epoch 1 on), optionally shuffled by a seed of its
    own (``buffer_size=1``: no example buffer, so nothing is lost on a resume)."""
    from datasets.distributed import split_dataset_by_node

    it = _stream(snap, split, columns=["seq"]).reshard()
    if shuffle:
        it = it.shuffle(seed=11, buffer_size=1)
    r = split_dataset_by_node(it, rank=rank, world_size=2, strategy=strategy)
    r.set_epoch(epoch)
    return r


def _row_groups(snap: SimpleNamespace, split: str) -> list[int]:
    import s3fs

    fs = s3fs.S3FileSystem(**snap.storage_options)
    with fs.open(f"{snap.url}/{split}/{H.HF_FILE}", "rb") as fh:
        md = pq.ParquetFile(fh).metadata
        return [md.row_group(i).num_rows for i in range(md.num_row_groups)]


@pytest.mark.parametrize(("strategy", "splits"), [("shards", ("train", "valid")), ("examples", ("train",))])
def test_two_ranks_see_every_sample_once_per_epoch(snap, no_aws_env, strategy: str, splits: tuple[str, ...]) -> None:
    from datasets.distributed import split_dataset_by_node

    for sp in splits:
        n = snap.manifest["counts"][sp]["sequences"]
        groups = _row_groups(snap, sp)
        assert sum(groups) == n and max(groups) <= ROWS_PER_GROUP
        plain = _stream(snap, sp)
        assert plain.num_shards == 1 and plain.reshard().num_shards == len(groups)
        # "auto" picks shards when the row groups divide among the ranks, else examples
        auto = split_dataset_by_node(plain.reshard(), rank=0, world_size=2)
        assert auto.num_shards == (len(groups) // 2 if len(groups) % 2 == 0 else len(groups))
        if sp == "train":
            assert len(groups) >= 6  # the test means something: several row groups per rank
        for epoch, shuffle in ((0, False), (1, False), (1, True)):
            per_rank = [[r["seq"] for r in _rank(snap, sp, k, strategy, epoch, shuffle)] for k in range(2)]
            seen = per_rank[0] + per_rank[1]
            assert sorted(seen) == list(range(n)), (sp, epoch)  # every sample, each once
            if strategy == "shards":
                # each rank reads whole row groups of its own, half of them (one more when odd)
                starts = np.cumsum([0, *groups])
                mine = [set(range(starts[g], starts[g + 1])) for g in range(len(groups))]
                for k in range(2):
                    got = set(per_rank[k])
                    assert all(m <= got or not (m & got) for m in mine), (sp, k)
                    assert sum(1 for m in mine if m <= got) in (len(groups) // 2, (len(groups) + 1) // 2)
            else:
                assert abs(len(per_rank[0]) - len(per_rank[1])) <= 1
            if epoch == 0:
                assert all(p == sorted(p) for p in per_rank)  # unshuffled: file order on each rank
                order0 = per_rank
            elif sp == "train":
                assert per_rank != order0  # row groups reordered per epoch, the same way on each rank


@pytest.mark.parametrize(
    ("strategy", "epoch", "shuffle"),
    [("shards", 0, False), ("shards", 1, False), ("shards", 1, True), ("examples", 1, False)],
    ids=["shards-epoch0", "shards-epoch1", "shards-epoch1-shuffled", "examples-epoch1"],
)
def test_resume_mid_epoch_repeats_and_skips_nothing(snap, no_aws_env, strategy: str, epoch: int, shuffle: bool) -> None:
    for k in range(2):
        full = [r["seq"] for r in _rank(snap, "train", k, strategy, epoch, shuffle)]
        # inside the rank's first row group (rank 0), past several row groups (rank 1)
        stop = ROWS_PER_GROUP // 2 + 3 if k == 0 else int(len(full) * 0.6)
        ds = _rank(snap, "train", k, strategy, epoch, shuffle)
        first = []
        for i, row in enumerate(ds):
            first.append(row["seq"])
            if i + 1 == stop:
                state = json.loads(json.dumps(ds.state_dict()))  # as a trainer checkpoints it
                break
        # a new process: the same dataset built again, the epoch set, the state loaded
        again = _rank(snap, "train", k, strategy, epoch, shuffle)
        again.load_state_dict(state)
        rest = [r["seq"] for r in again]
        assert len(first) == stop and rest and first + rest == full, (k, stop)
        if k == 0 and not shuffle:  # set the epoch before iterating: a state saved in another epoch is not applied
            other = _rank(snap, "train", k, strategy, epoch + 1, shuffle)
            other.load_state_dict(state)
            assert [r["seq"] for r in other] == [
                r["seq"] for r in _rank(snap, "train", k, strategy, epoch + 1, shuffle)
            ]


def test_bench_reads_every_train_row_from_s3(snap, s3_endpoint: str, monkeypatch, capsys) -> None:
    from corpus import bench_hf_stream

    point_at_s3(monkeypatch, s3_endpoint)
    capsys.readouterr()
    assert bench_hf_stream.main([snap.url, "--repeat", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    counts = snap.manifest["counts"]["train"]
    for mode in ("stream", "stream_batched", "stream_2ranks", "download", "npy"):
        assert (out[mode]["rows"], out[mode]["tokens"]) == (counts["sequences"], counts["tokens"]), mode
        assert out[mode]["tokens_per_s"] > 0
    assert bench_hf_stream.main([snap.url.rsplit("/", 1)[0] + "/000000000000"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bench_hf_stream: error: cannot read the snapshot at ") and len(err.splitlines()) == 1
