"""TextEncoder: a small byte-level transformer encoder that returns a sentence embedding.

Inputs: `input_ids` int64 [N, T] (bytes 1..255, 0 = padding) and `attention_mask` int64 [N, T]
(1 for tokens, 0 for padding). Output: `embedding` float32 [N, d_model], the masked mean of the
last layer. Attention is written out (Linear + MatMul + Softmax) so it exports to ONNX and
converts to OpenVINO as plain MatMuls that dynamic INT8 quantization can take.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, d_model: int, heads: int, ff: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, ff), nn.GELU(), nn.Linear(ff, d_model))

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        h = self.norm1(x)
        q, k, v = self.qkv(h).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads) + bias
        attn = torch.softmax(scores, dim=-1) @ v
        x = x + self.proj(attn.transpose(1, 2).reshape(n, t, d))
        return x + self.ff(self.norm2(x))


class TextEncoder(nn.Module):
    def __init__(self, vocab: int = 256, d_model: int = 256, heads: int = 4, layers: int = 4, ff: int = 1024,
                 max_len: int = 128):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Parameter(torch.randn(1, max_len, d_model) * 0.02)
        self.blocks = nn.ModuleList(Block(d_model, heads, ff) for _ in range(layers))
        self.norm = nn.LayerNorm(d_model)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        t = input_ids.shape[1]
        x = self.embed(input_ids) + self.pos[:, :t]
        mask = attention_mask.to(x.dtype)
        bias = ((1.0 - mask) * -1e4)[:, None, None, :]
        for block in self.blocks:
            x = block(x, bias)
        x = self.norm(x)
        pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)
        return {"embedding": pooled}
