"""A small transformer encoder on the digits, one token per 8-pixel row, called with named inputs.

``model(rows=..., mask=...)``: rows (B, 8, 8) float pixels in [0, 1]; mask (B, 8) float, 1 for
a real token and 0 for padding. Padded tokens are neither attended to nor pooled, so the
model serves sequences shorter than 8 too. The weights in ``digits_transformer.safetensors``
come from ``python -m ptflow.zoo.training digits_transformer``; the inputs from
``ptflow.zoo.digits.digits_rows``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Added to the attention scores of padded keys: large enough to zero their softmax weight,
# small enough to stay finite in float16 (so a fully padded row gives no NaNs).
MASKED_SCORE = -1e4


class EncoderLayer(nn.Module):
    """Pre-norm self-attention (F.scaled_dot_product_attention) and a GELU MLP, each residual."""

    def __init__(self, d_model: int, heads: int, mlp_ratio: int = 2):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model={d_model} must be a multiple of heads={heads}")
        self.heads = heads
        self.attn_norm = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.mlp_norm = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, mlp_ratio * d_model), nn.GELU(),
                                 nn.Linear(mlp_ratio * d_model, d_model))

    def forward(self, x: torch.Tensor, score_bias: torch.Tensor) -> torch.Tensor:
        batch, tokens, d_model = x.shape
        q, k, v = (self.qkv(self.attn_norm(x)).reshape(batch, tokens, 3, self.heads, -1)
                   .permute(2, 0, 3, 1, 4).unbind(0))                 # each (B, heads, T, d_head)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=score_bias)
        x = x + self.proj(attended.transpose(1, 2).reshape(batch, tokens, d_model))
        return x + self.mlp(self.mlp_norm(x))


class DigitsTransformer(nn.Module):
    """rows (B, T<=8, 8) + mask (B, T) -> 10 class logits; masked mean pool over the tokens."""

    def __init__(self, tokens: int = 8, token_dim: int = 8, d_model: int = 64, heads: int = 4,
                 depth: int = 2, mlp_ratio: int = 2, classes: int = 10):
        super().__init__()
        self.embed = nn.Linear(token_dim, d_model)
        self.position = nn.Parameter(torch.randn(1, tokens, d_model) * 0.02)
        self.layers = nn.ModuleList(EncoderLayer(d_model, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, classes)

    def forward(self, rows: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.embed(rows) + self.position[:, :rows.shape[1]]
        keep = mask.to(x.dtype)                                       # (B, T), 1 = real token
        score_bias = ((1 - keep) * MASKED_SCORE)[:, None, None, :]     # (B, 1, 1, T): per key
        for layer in self.layers:
            x = layer(x, score_bias)
        x = self.norm(x) * keep[..., None]
        pooled = x.sum(1) / keep.sum(1, keepdim=True).clamp_min(1)
        return self.head(pooled)
