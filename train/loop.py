"""Train a small decoder-only transformer on a snapshot's train split.

``train(snapshot_dir, out_dir, ...)`` runs ``steps`` optimizer steps over packed batches,
checkpoints to ``out_dir/checkpoint.pt`` (model, optimizer, loader position, RNG, losses;
written atomically), resumes from it when present, reports the valid loss, generates a
continuation of a valid piece decoded to ``out_dir/generated.mid`` through the snapshot's
tokenizer, and writes ``out_dir/metrics.json``.

Device ``auto`` picks CUDA when present: bf16 autocast, fused AdamW, TF32 matmuls and
``torch.compile`` (off with ``compile=False``); CPU otherwise (float32, no compile: for a
model this small compile time exceeds the run).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from train.data import PackedBatches, ResumableLoader, Shards, local_dir
from train.model import ModelConfig, TinyGPT

Device = Literal["auto", "cpu", "cuda"]


class TrainError(ValueError):
    """Bad user input (no CUDA for --device cuda, a split too small for one batch)."""


@dataclass
class TrainConfig:
    steps: int = 200
    batch_size: int = 8
    seq_len: int = 256
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    lr: float = 3e-3
    warmup: int = 10
    weight_decay: float = 0.01
    seed: int = 0
    num_workers: int = 0
    checkpoint_every: int = 100
    eval_batches: int = 8
    generate_tokens: int = 128
    compile: bool = True


def pick_device(device: Device) -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise TrainError("--device cuda: no CUDA device is available here (use auto or cpu)")
    if device not in ("auto", "cpu", "cuda"):
        raise TrainError(f"--device must be auto, cpu or cuda, got {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _as_list(batch: Any) -> list[torch.Tensor]:
    return list(batch) if isinstance(batch, tuple | list) else [batch]


def _save(path: Path, obj: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _lr(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    import math

    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def train(
    snapshot_dir: str | Path,
    out_dir: str | Path,
    cfg: TrainConfig | None = None,
    device: Device = "auto",
    resume: bool = True,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Train (or resume) up to ``cfg.steps``; returns the metrics also written to ``metrics.json``.

    ``stop_after`` ends the run after that many steps of this call (a simulated interruption,
    for tests): a checkpoint is written and no final evaluation happens.
    """
    cfg = cfg or TrainConfig()
    snapshot_dir, out = local_dir(snapshot_dir), Path(out_dir)  # an object-store URL: a local copy
    dev = pick_device(device)
    cuda = dev.type == "cuda"
    manifest = json.loads((snapshot_dir / "manifest.json").read_text())
    check_files(snapshot_dir, manifest)
    out.mkdir(parents=True, exist_ok=True)
    if manifest["tokenizer"]["is_multi_vocab"]:
        pass  # the model sums per-vocabulary embeddings and has one head per vocabulary
    torch.manual_seed(cfg.seed)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    train_ds = PackedBatches(snapshot_dir, "train", cfg.seq_len, cfg.batch_size, seed=cfg.seed)
    if train_ds.batches_per_epoch() == 0:
        raise TrainError(
            f"the train split of {snapshot_dir.name} has fewer tokens than one batch of {cfg.batch_size} x {cfg.seq_len}"
        )
    loader = ResumableLoader(train_ds, num_workers=cfg.num_workers, pin_memory=cuda)
    mcfg = ModelConfig(
        vocab_sizes=list(manifest["tokenizer"]["vocab_sizes"]),
        d_model=cfg.d_model,
        n_layers=cfg.n_layers,
        n_heads=cfg.n_heads,
        max_len=cfg.seq_len,
    )
    model = TinyGPT(mcfg).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95), fused=cuda)
    step = 0
    losses: list[float] = []
    ckpt = out / "checkpoint.pt"
    if resume and ckpt.exists():
        state = torch.load(ckpt, map_location=dev, weights_only=False)
        if state["snapshot_version"] != manifest["version"]:
            raise TrainError(
                f"{ckpt} was trained on snapshot version {state['snapshot_version']}, not {manifest['version']}; use another --out"
            )
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        loader.load_state_dict(state["loader"])
        torch.set_rng_state(state["rng"])
        step, losses = state["step"], state["losses"]
    fwd = torch.compile(model.loss) if (cuda and cfg.compile) else model.loss

    def checkpoint() -> None:
        _save(
            ckpt,
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "loader": loader.state_dict(),
                "rng": torch.get_rng_state(),
                "step": step,
                "losses": losses,
                "snapshot_version": manifest["version"],
                "model_config": mcfg.to_dict(),
                "train_config": cfg.__dict__,
            },
        )

    model.train()
    wait = compute = 0.0
    tokens = 0
    t_start = time.perf_counter()
    done_here = 0
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    while step < cfg.steps and (stop_after is None or done_here < stop_after):
        t0 = time.perf_counter()
        ids = [x.to(dev, non_blocking=True) for x in _as_list(next(loader))]
        t1 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = _lr(step, cfg)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
            loss = fwd(ids)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))  # syncs: the step's compute is inside the timing
        t2 = time.perf_counter()
        wait += t1 - t0
        compute += t2 - t1
        tokens += ids[0].numel()
        step += 1
        done_here += 1
        if step % cfg.checkpoint_every == 0:
            checkpoint()
    elapsed = time.perf_counter() - t_start
    checkpoint()
    metrics: dict[str, Any] = {
        "device": str(dev) + (f" ({torch.cuda.get_device_name(dev)})" if cuda else ""),
        "snapshot": f"{manifest['name']}@{manifest['version']}",
        "scheme": manifest["scheme"],
        "steps": step,
        "steps_this_run": done_here,
        "train_loss_first": losses[0] if losses else None,
        "train_loss_last": sum(losses[-5:]) / len(losses[-5:]) if losses else None,
        "tokens_per_s": tokens / elapsed if elapsed > 0 else None,
        "data_wait_share": wait / (wait + compute) if wait + compute > 0 else None,
        "loader_position": loader.state_dict(),
        "mix": train_ds.mix_report(),  # per label of --mix: share of the epoch and repeats per epoch
        "model": {**mcfg.to_dict(), "parameters": sum(p.numel() for p in model.parameters())},
        "config": cfg.__dict__,
        "compiled": bool(cuda and cfg.compile),
    }
    if cuda:
        metrics["gpu_max_memory_allocated_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
        metrics["gpu_max_memory_reserved_mb"] = torch.cuda.max_memory_reserved(dev) / 2**20
    if stop_after is not None and step < cfg.steps:
        metrics["interrupted"] = True
        return metrics
    model.eval()
    metrics["valid_loss"] = evaluate(model, snapshot_dir, cfg, dev)
    metrics.update(generate_midi(model, snapshot_dir, out, cfg, dev))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    return metrics


def check_files(snapshot_dir: Path, manifest: dict[str, Any]) -> None:
    """Before any work: every file the manifest lists is there with its size (the cheap half of
    ``snapshot verify``), so a damaged snapshot fails up front, not after a checkpoint."""
    ref = f"{manifest['name']}@{manifest['version']}"
    for rel, meta in sorted(manifest.get("files", {}).items()):
        p = snapshot_dir / rel
        if not p.is_file():
            raise TrainError(f"snapshot {ref} is missing {rel}; check it with: midicorpus snapshot verify {ref}")
        if "bytes" in meta and p.stat().st_size != meta["bytes"]:
            raise TrainError(
                f"snapshot {ref}: {rel} has {p.stat().st_size} bytes, the manifest says {meta['bytes']}; "
                f"check it with: midicorpus snapshot verify {ref}"
            )


@torch.no_grad()
def evaluate(
    model: TinyGPT, snapshot_dir: Path, cfg: TrainConfig, dev: torch.device, split: str = "valid"
) -> float | None:
    """Mean loss over the first ``cfg.eval_batches`` packed batches of ``split`` (unshuffled)."""
    ds = PackedBatches(snapshot_dir, split, cfg.seq_len, cfg.batch_size, seed=cfg.seed, shuffle=False)
    n = min(cfg.eval_batches, ds.batches_per_epoch())
    if n == 0:
        ds = PackedBatches(snapshot_dir, split, cfg.seq_len, 1, seed=cfg.seed, shuffle=False)
        n = min(cfg.eval_batches, ds.batches_per_epoch())
    if n == 0:
        return None
    total = 0.0
    for b in range(n):
        ids = [x.to(dev) for x in _as_list(ds.batch(0, b))]
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            total += float(model.loss(ids))
    return total / n


def generate_midi(model: TinyGPT, snapshot_dir: Path, out: Path, cfg: TrainConfig, dev: torch.device) -> dict[str, Any]:
    """Continue the start of the first valid (else test, else train) sequence; decode to MIDI."""
    res: dict[str, Any] = {}
    shards = None
    for split in ("valid", "test", "train"):
        s = Shards(snapshot_dir, split)
        if s.n_sequences:
            shards = s
            break
    if shards is None or shards.multi:
        res["generated_midi"] = None
        res["generation_note"] = (
            "multi-vocabulary generation is not implemented" if shards is not None else "empty snapshot"
        )
        return res
    seq = shards.sequence(0).astype("int64")
    prompt = torch.tensor([shards.bos, *seq[: min(len(seq), cfg.seq_len // 2)].tolist()], device=dev)
    g = torch.Generator(device=dev).manual_seed(cfg.seed)
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
        ids = model.generate(prompt, cfg.generate_tokens, generator=g).tolist()
    ids = [i for i in ids[1:] if i not in (shards.bos, shards.pad)]
    if shards.eos in ids:
        ids = ids[: ids.index(shards.eos)]
    res["generated_tokens"] = len(ids)
    res["prompt_tokens"] = len(prompt) - 1
    try:
        from corpus.tokenize import presets

        tok = presets.from_json(snapshot_dir / "tokenizer.json")
        score = tok.decode([ids] if not tok.config.one_token_stream_for_programs else ids)
        path = out / "generated.mid"
        score.dump_midi(str(path))
        res["generated_midi"] = str(path)
        res["generated_notes"] = sum(len(t.notes) for t in score.tracks)
    except Exception as exc:  # noqa: BLE001 - a sampled sequence miditok cannot decode is reported, not fatal
        res["generated_midi"] = None
        res["generation_error"] = f"{type(exc).__name__}: {exc}"
    return res
