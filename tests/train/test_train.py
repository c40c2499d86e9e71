"""Training on a snapshot from the shared data: loss goes down, resume equals an uninterrupted run."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from corpus import snapshot as S  # noqa: E402
from tests.train import DATA, build_test_lake  # noqa: E402
from train.loop import TrainConfig, TrainError, train  # noqa: E402

TINY = dict(
    steps=30,
    batch_size=4,
    seq_len=64,
    d_model=48,
    n_layers=2,
    n_heads=4,
    lr=3e-3,
    warmup=5,
    eval_batches=2,
    generate_tokens=32,
    checkpoint_every=1000,
)


@pytest.fixture(scope="module")
def snap(tmp_path_factory: pytest.TempPathFactory):
    if not DATA.is_dir():
        pytest.skip(f"real test data not found at {DATA} (shared/ must sit beside the repository)")
    lake = build_test_lake(tmp_path_factory.mktemp("train") / "lake", ("remi_multitrack",))
    with lake.lock():
        return S.create(lake, S.SnapshotSpec("mt", "remi_multitrack", split=(0.6, 0.2, 0.2))).path


def test_tiny_model_learns_and_writes_metrics_and_midi(snap, tmp_path) -> None:
    m = train(snap, tmp_path / "run", TrainConfig(**TINY), device="cpu")
    assert m["steps"] == 30 and m["device"] == "cpu"
    assert m["train_loss_last"] < m["train_loss_first"] - 1.0
    assert m["valid_loss"] is not None and m["valid_loss"] < m["train_loss_first"]
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for key in (
        "device",
        "steps",
        "train_loss_first",
        "train_loss_last",
        "valid_loss",
        "tokens_per_s",
        "data_wait_share",
    ):
        assert saved[key] is not None, key
    assert (tmp_path / "run" / "generated.mid").stat().st_size > 0, saved.get("generation_error")


def test_resume_matches_uninterrupted_run(snap, tmp_path) -> None:
    cfg = TrainConfig(**{**TINY, "steps": 12})
    full = train(snap, tmp_path / "full", cfg, device="cpu")
    part = train(snap, tmp_path / "part", cfg, device="cpu", stop_after=5)
    assert part.get("interrupted") and part["steps"] == 5
    rest = train(snap, tmp_path / "part", cfg, device="cpu")
    assert rest["steps_this_run"] == 7 and rest["loader_position"] == full["loader_position"]
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)["losses"]
    b = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=False)["losses"]
    assert a == pytest.approx(b, rel=1e-5, abs=1e-5)


def test_cuda_requested_without_cuda_is_one_clear_error(snap, tmp_path) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    with pytest.raises(TrainError, match="--device cuda"):
        train(snap, tmp_path / "x", TrainConfig(**TINY), device="cuda")
