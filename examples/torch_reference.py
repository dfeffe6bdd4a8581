"""PyTorch definitions of the modules attn reproduces, for the scripts that need PyTorch.

attn's C++ classes load these modules' state_dicts one to one and give their numbers.
examples/export_weights.py, tests/reference/make_reference.py and bench/compare.py import
this file by path (it sits next to export_weights.py), so a clone of the repository has
everything they need. Each class mirrors one upstream model, with its parameter names,
parameter registration order (which fixes the order of a state_dict and of random
initialisation) and numerical quirks; the docstrings say which.

`torch.nn.MultiheadAttention(batch_first=True)` is PyTorch's own and is used as it is.

Needs PyTorch (Debian: apt-get install python3-torch python3-numpy, then /usr/bin/python3).
Run as a script, it prints the output shape of each module on a small input.
"""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = ["SingleHeadSelfAttention", "SeparateProjectionMultiHeadAttention", "TalkingHeadAttn",
           "AttentionBlock", "MobileViTAttention", "MobileViTTransformerEncoder"]


class SingleHeadSelfAttention(nn.Module):
    """Single-head self-attention of the textbook kind (attn::SelfAttention).

    Three separate Linear layers with bias (registered value, key, query: that order is the
    state_dict's), no output projection. Quirk: the scores are divided by
    torch.sqrt(torch.tensor(embed_size, dtype=torch.float32)), a float32 square root even
    when the module runs in float64 (it matters where sqrt(E) is inexact, e.g. E = 6).
    Parameters: query.*, key.*, value.*.
    """

    def __init__(self, embed_size: int):
        super().__init__()
        self.embed_size = embed_size
        self.value = nn.Linear(embed_size, embed_size)
        self.key = nn.Linear(embed_size, embed_size)
        self.query = nn.Linear(embed_size, embed_size)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.query(x), self.key(x), self.value(x)
        scores = torch.matmul(q, k.transpose(1, 2)) / torch.sqrt(
            torch.tensor(self.embed_size, dtype=torch.float32))
        return torch.matmul(F.softmax(scores, dim=-1), v)


class SeparateProjectionMultiHeadAttention(nn.Module):
    """Multi-head attention with four separate Linear layers q, k, v, out (all with bias),
    the common from-scratch form (attn::MultiHeadAttention with MhaLayout::kSeparateLinears).

    forward(query, key, value): self-attention when they are one tensor, cross-attention
    otherwise (key and value of the same length). Quirk: the scores q k^T are divided by
    torch.sqrt(torch.tensor(head_dim, dtype=torch.float32)), a float32 square root also in
    float64, after the product (nn.MultiheadAttention scales q before it). No masks, no
    attention weights returned. Parameters: q.*, k.*, v.*, out.*.
    """

    def __init__(self, embed_size: int, num_heads: int):
        super().__init__()
        self.embed_size = embed_size
        self.num_heads = num_heads
        self.head_dim = embed_size // num_heads
        assert self.head_dim * num_heads == embed_size, "embed_size must be divisible by num_heads"
        self.q = nn.Linear(embed_size, embed_size)
        self.k = nn.Linear(embed_size, embed_size)
        self.v = nn.Linear(embed_size, embed_size)
        self.out = nn.Linear(embed_size, embed_size)

    def forward(self, query: Tensor, key: Tensor, value: Tensor) -> Tensor:
        n, len_q, len_k = query.shape[0], query.shape[1], key.shape[1]
        h, d = self.num_heads, self.head_dim
        q = self.q(query).reshape(n, len_q, h, d).permute(0, 2, 1, 3)
        k = self.k(key).reshape(n, len_k, h, d).permute(0, 2, 1, 3)
        v = self.v(value).reshape(n, value.shape[1], h, d).permute(0, 2, 1, 3)
        scores = torch.matmul(q, k.transpose(-2, -1)) / torch.sqrt(torch.tensor(d, dtype=torch.float32))
        out = torch.matmul(F.softmax(scores, dim=-1), v).permute(0, 2, 1, 3).reshape(n, len_q, self.embed_size)
        return self.out(out)


class TalkingHeadAttn(nn.Module):
    """timm's CaiT TalkingHeadAttn (timm/models/cait.py; Shazeer et al. 2020, "Talking-Heads
    Attention"), attn::TalkingHeadsAttention.

    Fused qkv Linear (bias off by default); q multiplied by head_dim ** -0.5 (a Python
    double) before the product; proj_l mixes the heads of the logits (before softmax),
    proj_w those of the probabilities (after softmax), both Linear(num_heads, num_heads)
    with bias; attention dropout after proj_w; output Linear proj with bias; proj_drop.
    Self-attention only, and timm's module takes no masks (attn's masks act after proj_l:
    see tests/reference/make_reference.py). Parameters: qkv.*, proj.*, proj_l.*, proj_w.*.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, attn_drop: float = 0.,
                 proj_drop: float = 0.):
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_l = nn.Linear(num_heads, num_heads)
        self.proj_w = nn.Linear(num_heads, num_heads)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = q @ k.transpose(-2, -1)
        attn = self.proj_l(attn.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        attn = attn.softmax(dim=-1)
        attn = self.proj_w(attn.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        attn = self.attn_drop(attn)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        x = self.proj(x)
        x = self.proj_drop(x)
        return x


class AttentionBlock(nn.Module):
    """nn.MultiheadAttention(batch_first=True) with a residual connection and LayerNorm over
    the (N, C, L) feature maps of a CNN (attn::AttentionBlock): permute to (N, L, C), self-
    attend, add and normalise, permute back. Takes no masks (attn's AttentionBlock passes its
    masks to the inner attention). Parameters: mha.* (nn.MultiheadAttention), norm.*.
    """

    def __init__(self, embed_dim: int, num_heads: int):
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        self.mha = nn.MultiheadAttention(embed_dim=embed_dim, num_heads=num_heads, batch_first=True)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        seq = x.permute(0, 2, 1)
        attn_output, _ = self.mha(seq, seq, seq)
        return self.norm(seq + attn_output).permute(0, 2, 1)


class MobileViTAttention(nn.Module):
    """MobileViT's MultiHeadAttention (apple/ml-cvnets, cvnets/layers/multi_head_attention.py),
    attn::MultiHeadAttention with MhaLayout::kFusedQkv.

    Fused qkv_proj Linear, q multiplied by head_dim ** -0.5 (a Python double) before the
    product, softmax, attention dropout, out_proj. Self-attention only, no masks.
    Parameters: qkv_proj.*, out_proj.*.
    """

    def __init__(self, embed_dim: int, num_heads: int, attn_dropout: float = 0.0, bias: bool = True):
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError("Embedding dim must be divisible by number of heads")
        self.qkv_proj = nn.Linear(embed_dim, 3 * embed_dim, bias=bias)
        self.attn_dropout = nn.Dropout(p=attn_dropout)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.head_dim = embed_dim // num_heads
        self.scaling = self.head_dim ** -0.5
        self.num_heads = num_heads
        self.embed_dim = embed_dim

    def forward(self, x_q: Tensor) -> Tensor:
        b_sz, n_patches, _ = x_q.shape
        qkv = self.qkv_proj(x_q).reshape(b_sz, n_patches, 3, self.num_heads, -1)
        qkv = qkv.transpose(1, 3).contiguous()
        query, key, value = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        query = query * self.scaling
        attn = torch.matmul(query, key.transpose(-1, -2))
        attn = torch.softmax(attn, dim=-1)
        attn = self.attn_dropout(attn)
        out = torch.matmul(attn, value)
        out = out.transpose(1, 2).reshape(b_sz, n_patches, -1)
        return self.out_proj(out)


class MobileViTTransformerEncoder(nn.Module):
    """MobileViT's pre-norm TransformerEncoder layer (apple/ml-cvnets,
    cvnets/modules/transformer.py), attn::MobileViTEncoderLayer:

        x = x + Dropout(MobileViTAttention(LayerNorm(x)))
        x = x + Dropout(Linear(F, C)(Dropout(SiLU(Linear(C, F)(LayerNorm(x))))))

    Three dropout probabilities: attn_dropout on the attention weights, dropout on both
    residual branches, ffn_dropout inside the FFN. Parameters: the nn.Sequential names
    pre_norm_mha.0.* (LayerNorm), pre_norm_mha.1.{qkv_proj,out_proj}.*, pre_norm_ffn.0.*
    (LayerNorm), pre_norm_ffn.1.* and pre_norm_ffn.4.* (the Linear layers).
    """

    def __init__(self, embed_dim: int, ffn_latent_dim: int, num_heads: Optional[int] = 8,
                 attn_dropout: float = 0.0, dropout: float = 0.0, ffn_dropout: float = 0.0):
        super().__init__()
        self.pre_norm_mha = nn.Sequential(
            nn.LayerNorm(embed_dim),
            MobileViTAttention(embed_dim, num_heads, attn_dropout=attn_dropout, bias=True),
            nn.Dropout(p=dropout),
        )
        self.pre_norm_ffn = nn.Sequential(
            nn.LayerNorm(embed_dim),
            nn.Linear(embed_dim, ffn_latent_dim, bias=True),
            nn.SiLU(),
            nn.Dropout(p=ffn_dropout),
            nn.Linear(ffn_latent_dim, embed_dim, bias=True),
            nn.Dropout(p=dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.pre_norm_mha(x)
        return x + self.pre_norm_ffn(x)


if __name__ == "__main__":
    torch.manual_seed(0)
    with torch.no_grad():
        x = torch.randn(2, 10, 32)
        print("SingleHeadSelfAttention", tuple(SingleHeadSelfAttention(32)(x).shape))
        print("SeparateProjectionMultiHeadAttention", tuple(SeparateProjectionMultiHeadAttention(32, 4)(x, x, x).shape))
        print("TalkingHeadAttn", tuple(TalkingHeadAttn(32, num_heads=4)(x).shape))
        print("AttentionBlock", tuple(AttentionBlock(32, 4)(x.transpose(1, 2)).shape))
        print("MobileViTAttention", tuple(MobileViTAttention(32, 4)(x).shape))
        print("MobileViTTransformerEncoder", tuple(MobileViTTransformerEncoder(32, 64, 4)(x).shape))
