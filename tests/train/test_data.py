"""The torch loaders over snapshot shards: random access, packing, determinism, resume, sharding."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from corpus import snapshot as S  # noqa: E402
from tests.train import DATA, build_test_lake  # noqa: E402
from train.data import PackedBatches, ResumableLoader, SequenceDataset, loader_tokens_per_s  # noqa: E402


@pytest.fixture(scope="module")
def snaps(tmp_path_factory: pytest.TempPathFactory):
    if not DATA.is_dir():
        pytest.skip(f"real test data not found at {DATA} (shared/ must sit beside the repository)")
    lake = build_test_lake(tmp_path_factory.mktemp("data") / "lake", ("remi_multitrack", "cpword"))
    with lake.lock():
        mt = S.create(lake, S.SnapshotSpec("mt", "remi_multitrack", split=(0.6, 0.2, 0.2)))
        cp = S.create(lake, S.SnapshotSpec("cp", "cpword", split=(0.6, 0.2, 0.2)))
    return mt.path, cp.path


def _take(loader, n):
    return [next(loader) for _ in range(n)]


def test_map_style_random_access(snaps) -> None:
    ds = SequenceDataset(snaps[0], "train")
    tok = np.load(snaps[0] / "train" / "tokens.npy")
    idx = np.load(snaps[0] / "train" / "index.npy")
    i = len(ds) - 1
    assert ds[i].tolist() == tok[idx[i] : idx[i + 1]].tolist()
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_packed_windows_have_bos_eos_and_are_deterministic(snaps) -> None:
    a = PackedBatches(snaps[0], seq_len=64, batch_size=4, seed=7)
    b = PackedBatches(snaps[0], seq_len=64, batch_size=4, seed=7)
    assert torch.equal(a.batch(0, 3), b.batch(0, 3))
    n = a.batches_per_epoch()
    e0 = torch.cat([a.batch(0, k) for k in range(n)])
    e1 = torch.cat([a.batch(1, k) for k in range(n)])
    assert not torch.equal(e0, e1)  # another epoch, another order
    flat = e0.flatten()
    assert (flat == 1).sum() > 0 and (flat == 2).sum() > 0  # BOS and EOS of miditok's special tokens
    assert a.batch(0, 0).shape == (4, 64) and a.batch(0, 0).dtype == torch.int64


def test_resume_gives_the_same_batches_with_any_worker_count(snaps) -> None:
    ds = lambda: PackedBatches(snaps[0], seq_len=64, batch_size=4, seed=1)  # noqa: E731
    per_epoch = ds().batches_per_epoch()
    n = per_epoch + 5  # crosses an epoch boundary
    ref = _take(ResumableLoader(ds()), n)
    first = ResumableLoader(ds(), num_workers=2)
    got = _take(first, 7)
    state = first.state_dict()
    second = ResumableLoader(ds(), num_workers=1)
    second.load_state_dict(state)
    got += _take(second, n - 7)
    assert all(torch.equal(x, y) for x, y in zip(ref, got, strict=True))
    assert second.state_dict()["epoch"] == 1


def test_ranks_get_equal_disjoint_shares(snaps) -> None:
    full = PackedBatches(snaps[0], seq_len=32, batch_size=1, seed=2)
    ranks = [PackedBatches(snaps[0], seq_len=32, batch_size=1, seed=2, rank=r, world_size=3) for r in range(3)]
    counts = {r.batches_per_epoch() for r in ranks}
    assert len(counts) == 1
    k = counts.pop()
    for w in range(3 * k):  # rank r holds windows r, r + 3, ...
        assert torch.equal(full.batch(0, w), ranks[w % 3].batch(0, w // 3))


def test_multi_vocab_yields_one_tensor_per_vocabulary(snaps) -> None:
    ds = SequenceDataset(snaps[1], "train")
    n_voc = len(ds.shards.vocab_sizes)
    item = ds[0]
    assert isinstance(item, tuple) and len(item) == n_voc
    batch = next(ResumableLoader(PackedBatches(snaps[1], seq_len=32, batch_size=2), num_workers=1))
    assert isinstance(batch, tuple) and len(batch) == n_voc and all(t.shape == (2, 32) for t in batch)
    assert batch[0][0, 0].item() == ds.shards.bos[0]


def test_loader_throughput_function(snaps) -> None:
    r = loader_tokens_per_s(snaps[0], workers=(0, 1), seq_len=128, batch_size=4, seconds=0.3)
    assert set(r["workers"]) == {"0", "1"} and all(v["tokens_per_s"] > 0 for v in r["workers"].values())
