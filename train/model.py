"""A small decoder-only transformer (GPT-style, pre-norm, causal SDPA).

Multi-vocabulary input (one id per vocabulary per position) is embedded as the sum of the
per-vocabulary embeddings, with one output head per vocabulary.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ModelConfig:
    vocab_sizes: list[int] = field(default_factory=lambda: [512])
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    max_len: int = 256
    dropout: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


class Block(nn.Module):
    def __init__(self, c: ModelConfig) -> None:
        super().__init__()
        self.n_heads = c.n_heads
        self.ln1 = nn.LayerNorm(c.d_model)
        self.qkv = nn.Linear(c.d_model, 3 * c.d_model)
        self.proj = nn.Linear(c.d_model, c.d_model)
        self.ln2 = nn.LayerNorm(c.d_model)
        self.mlp = nn.Sequential(nn.Linear(c.d_model, 4 * c.d_model), nn.GELU(), nn.Linear(4 * c.d_model, c.d_model))
        self.dropout = c.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    def __init__(self, c: ModelConfig) -> None:
        super().__init__()
        self.config = c
        self.emb = nn.ModuleList(nn.Embedding(v, c.d_model) for v in c.vocab_sizes)
        self.pos = nn.Embedding(c.max_len, c.d_model)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layers))
        self.ln = nn.LayerNorm(c.d_model)
        self.heads = nn.ModuleList(nn.Linear(c.d_model, v, bias=False) for v in c.vocab_sizes)
        if len(c.vocab_sizes) == 1:
            self.heads[0].weight = self.emb[0].weight  # tied embeddings
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, ids: list[torch.Tensor]) -> list[torch.Tensor]:
        """``ids``: one (B, T) tensor per vocabulary; returns one (B, T, V_i) logits tensor per vocabulary."""
        t = ids[0].shape[1]
        x = self.pos(torch.arange(t, device=ids[0].device))[None]
        for e, i in zip(self.emb, ids, strict=True):
            x = x + e(i)
        for blk in self.blocks:
            x = blk(x)
        x = self.ln(x)
        return [h(x) for h in self.heads]

    def loss(self, ids: list[torch.Tensor]) -> torch.Tensor:
        """Next-token cross-entropy, averaged over vocabularies."""
        logits = self([i[:, :-1] for i in ids])
        losses = [
            F.cross_entropy(lg.float().flatten(0, 1), i[:, 1:].flatten()) for lg, i in zip(logits, ids, strict=True)
        ]
        return torch.stack(losses).mean()

    @torch.no_grad()
    def generate(
        self,
        prompt: torch.Tensor,
        n_new: int,
        temperature: float = 1.0,
        top_k: int = 32,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample ``n_new`` tokens after a (T,) prompt (single vocabulary); returns prompt + new tokens."""
        seq = prompt.clone()
        for _ in range(n_new):
            ctx = seq[-self.config.max_len :][None]
            logits = self([ctx])[0][0, -1].float() / max(temperature, 1e-5)
            if top_k:
                v, _ = torch.topk(logits, min(top_k, logits.numel()))
                logits[logits < v[-1]] = -float("inf")
            nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)
            seq = torch.cat([seq, nxt.to(seq.device)])
        return seq
