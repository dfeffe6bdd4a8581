"""PyTorch definitions of the modules attn reproduces, for the scripts that need PyTorch.

attn's C++ classes load these modules' state_dicts one to one and give their numbers.
examples/export_weights.py, tests/reference/make_reference.py and bench/compare.py import
this file by path (it sits next to export_weights.py), so a clone of the repository has
everything they need. Each class mirrors one upstream model, with its parameter names,
parameter registration order (which fixes the order of a state_dict and of random
initialisation) and numerical quirks; the docstrings say which.

`torch.nn.MultiheadAttention(batch_first=True)`, `torch.nn.TransformerEncoderLayer` and
`torch.nn.TransformerDecoderLayer` are PyTorch's own and are used as they are. PyTorch 1.13 has
no grouped-query attention, rotary embedding, sliding window, softcap or ALiBi: `LlamaAttention`
and `attention_reference` below write them from the upstream formulas.

Needs PyTorch (Debian: apt-get install python3-torch python3-numpy, then /usr/bin/python3).
Run as a script, it prints the output shape of each module on a small input.
"""
from typing import Callable, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = ["SingleHeadSelfAttention", "SeparateProjectionMultiHeadAttention", "TalkingHeadAttn",
           "AttentionBlock", "MobileViTAttention", "MobileViTTransformerEncoder", "LlamaAttention",
           "attention_reference", "softmax_policy", "causal_window_mask", "alibi_slopes"]


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


# ----------------------------------------------------------------------------
# Decoding: grouped-query attention, rotary embedding, sliding window, softcap, ALiBi
# ----------------------------------------------------------------------------

def softmax_policy(logits: Tensor) -> Tensor:
    """softmax over the last dim; a row whose logits are all -inf gets 0 (attn's fully-masked
    policy, as PyTorch >= 2.5 SDPA and ONNX; PyTorch 1.13 gives NaN there). Other NaNs stay."""
    w = logits.softmax(-1)
    return w.masked_fill(torch.isneginf(logits).all(-1, keepdim=True), 0.0)


def causal_window_mask(L: int, S: int, causal: str = "bottom_right", window: Optional[int] = None) -> Tensor:
    """(L, S) bool, True = masked. Query i sees key j iff diag(i) - W < j <= diag(i), where
    diag(i) = i + S - L ("bottom_right", FlashAttention's and decoding's alignment) or i
    ("top_left", PyTorch's is_causal); no lower bound without a window (Mistral's
    sliding_window W: the W most recent keys, the query's own included)."""
    diag = torch.arange(L)[:, None] + (0 if causal == "top_left" else S - L)
    j = torch.arange(S)[None, :]
    masked = j > diag
    if window is not None:
        masked |= j <= diag - window
    return masked


def alibi_slopes(num_heads: int) -> Tensor:
    """ALiBi's head slopes (Press et al. 2022; BLOOM's build_alibi_tensor) for a power-of-two
    number of heads: 2^(-8 (h + 1) / H)."""
    return torch.tensor([2.0 ** (-8.0 * (h + 1) / num_heads) for h in range(num_heads)], dtype=torch.float64)


def repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    """HF's repeat_kv: (B, K, S, D) -> (B, K * n_rep, S, D), key/value head h // n_rep for query head h."""
    b, k, s, d = x.shape
    return x if n_rep == 1 else x[:, :, None].expand(b, k, n_rep, s, d).reshape(b, k * n_rep, s, d)


def attention_logits(q: Tensor, k: Tensor, scale: float, softcap: Optional[float] = None,
                     bias: Optional[Tensor] = None, sinks: Optional[Tensor] = None) -> Tensor:
    """The logits of eager_attention: q k^T * scale over k repeated to q's heads, soft-capped
    c * tanh(logits / c), plus an additive bias (ALiBi and masks, -inf = masked); with sinks
    (H), gpt-oss's attention sinks, one more column holding head h's sink logit."""
    logits = torch.matmul(q, repeat_kv(k, q.shape[1] // k.shape[1]).transpose(-1, -2)) * scale
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    if bias is not None:
        logits = logits + bias
    if sinks is not None:  # gpt-oss: torch.cat([QK, S], dim=-1), softmax, then W[..., :-1]
        column = sinks.to(logits.dtype).reshape(1, -1, 1, 1).expand(*logits.shape[:-1], 1)
        logits = torch.cat((logits, column), dim=-1)
    return logits


def eager_attention(q: Tensor, k: Tensor, v: Tensor, scale: float, softcap: Optional[float] = None,
                    bias: Optional[Tensor] = None, sinks: Optional[Tensor] = None) -> Tensor:
    """HF's eager_attention_forward (modeling_llama / modeling_gemma2 / modeling_gpt_oss): q (B,
    H, L, D) over k, v (B, K, S, D) repeated to H heads; softmax (softmax_policy) of
    attention_logits, the sinks' column dropped, @ v."""
    w = softmax_policy(attention_logits(q, k, scale, softcap, bias, sinks))
    if sinks is not None:
        w = w[..., :-1]
    return torch.matmul(w, repeat_kv(v, q.shape[1] // k.shape[1]))


def attention_reference(q: Tensor, k: Tensor, v: Tensor, *, scale: Optional[float] = None, causal: str = "none",
                        sliding_window: Optional[int] = None, softcap: Optional[float] = None,
                        alibi: Optional[Tensor] = None, mask_bias: Optional[Tensor] = None,
                        sinks: Optional[Tensor] = None, return_lse: bool = False):
    """The attention core with decoding's options, computed in float64, returned in q's dtype.

    q (B, H, L, D); k, v (B, K, S, D) with H = g K (query head h reads key/value head h // g);
    scale default 1/sqrt(D); logits soft-capped, then ALiBi -slope_h * |i + S - L - j| (alibi:
    (H) slopes), then mask_bias (additive, broadcastable to (B, H, L, S)), then causal and
    sliding-window masking (causal_window_mask; a window without causal is bottom-right);
    sinks (H): gpt-oss's attention sinks. return_lse: also the log-sum-exp (B, H, L) of the
    logits (the sinks included), torch.logsumexp's, in q's dtype."""
    H, L, D, S = q.shape[1], q.shape[2], q.shape[3], k.shape[2]
    bias = torch.zeros(1, H, L, S, dtype=torch.float64)
    if alibi is not None:
        dist = (torch.arange(L)[:, None] + S - L - torch.arange(S)[None, :]).abs().double()
        bias = bias - alibi.double()[None, :, None, None] * dist
    if mask_bias is not None:
        bias = bias + mask_bias.double()
    if causal != "none" or sliding_window is not None:
        bias = bias.masked_fill(causal_window_mask(L, S, causal, sliding_window), float("-inf"))
    scale = D ** -0.5 if scale is None else scale
    sinks = None if sinks is None else sinks.double()
    out = eager_attention(q.double(), k.double(), v.double(), scale, softcap, bias, sinks).to(q.dtype)
    if not return_lse:
        return out
    lse = torch.logsumexp(attention_logits(q.double(), k.double(), scale, softcap, bias, sinks), dim=-1)
    return out, lse.to(q.dtype)


def quantize_int8(x: Tensor) -> Tuple[Tensor, Tensor]:
    """attn::KVCache<T, std::int8_t>'s rule for one row x (..., D) of keys or values:
    scale = max|x| / 127 in x's dtype, q = round-half-even(x / scale) (all 0 where max|x| = 0).
    Returns (q, scale (..., 1)), q as integers in x's dtype."""
    amax = x.abs().amax(-1, keepdim=True)
    scale = amax / 127
    return torch.where(amax > 0, torch.round(x / scale), torch.zeros_like(x)), scale


def kv_store(dtype: str) -> Callable[[Tensor], Tensor]:
    """What a KV cache stored in dtype ("bfloat16", "float16" or "int8") gives back for a row it
    was handed: rounded to the 16-bit type, or quantised (quantize_int8) and scaled back."""
    if dtype == "int8":
        return lambda x: (lambda q, scale: q * scale)(*quantize_int8(x))
    wide = getattr(torch, dtype)
    return lambda x: x.to(wide).to(x.dtype)


def rotate_half(x: Tensor) -> Tensor:
    """HF Llama / GPT-NeoX pairing: (x1, x2) halves -> (-x2, x1)."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotate_every_two(x: Tensor) -> Tensor:
    """GPT-J / Meta's original Llama pairing (interleaved): pairs (2i, 2i+1) -> (-x_{2i+1}, x_{2i})."""
    return torch.stack((-x[..., 1::2], x[..., ::2]), dim=-1).flatten(-2)


def rotary_cos_sin(positions: Tensor, rotary_dim: int, theta: float, interleaved: bool, dtype):
    """cos, sin (L, rotary_dim) of angle position * theta^(-2i / rotary_dim) for pair i, laid out
    for rotate_half (freqs repeated as two halves, HF) or interleaved (each freq twice, GPT-J).
    The angles are computed in float64 and cos/sin rounded to dtype (HF computes the angles in
    float32, which is off by ~1e-5 rad already at position 100)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim)
    freqs = positions.double()[:, None] * inv_freq[None, :]
    emb = freqs.repeat_interleave(2, dim=-1) if interleaved else torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor, interleaved: bool) -> Tensor:
    """HF's apply_rotary_pos_emb on (B, H, L, D), rotating the first rotary_dim = cos.shape[-1]
    dims only (partial rotary, GPT-NeoX / Phi) and passing the rest through."""
    r = cos.shape[-1]
    x_rot, x_pass = x[..., :r], x[..., r:]
    rotated = x_rot * cos + (rotate_every_two(x_rot) if interleaved else rotate_half(x_rot)) * sin
    return torch.cat((rotated, x_pass), dim=-1)


class LlamaAttention(nn.Module):
    """HF transformers' LlamaAttention (models/llama/modeling_llama.py) with the options of its
    relatives, attn::GroupedQueryAttention:

    * q_proj (H*D, E), k_proj and v_proj (K*D, E), o_proj (E, H*D); no bias, or q/k/v biases
      (qkv_bias: Qwen2Attention); o_proj never has one. Registered q, k, v, o (state_dict order).
    * grouped key/value heads: query head h reads key/value head h // (H / K) (repeat_kv);
      K = 1 is multi-query attention, K = H plain multi-head attention.
    * rotary position embedding of q and k at positions 0 .. L-1 (rope=False: none), theta
      (rope_theta), pairing rotate_half (HF Llama, GPT-NeoX) or interleaved (GPT-J), the first
      rotary_dim dims only (partial rotary; default head_dim).
    * causal masking; sliding_window W (MistralAttention: query i sees keys i-W < j <= i);
      attn_logit_softcapping (Gemma2Attention: c * tanh(logits / c), after scaling, before
      the masks); scale head_dim ** -0.5; optional key_padding_mask (B, L), True = padding.
    * sinks (GptOssAttention): a parameter `sinks` (H), registered after o_proj, one logit per
      head in each softmax's denominator (attention_logits).
    * kv_store (an attribute, None by default): a function the new keys and values (after the
      rotation) go through before attention, a KV cache's storage (kv_store()).
    Computes in the module's dtype (HF upcasts the softmax to float32; here float64 stays float64).
    """

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: Optional[int] = None,
                 qkv_bias: bool = False, rope: bool = True, rotary_dim: Optional[int] = None,
                 rope_theta: float = 10000.0, interleaved: bool = False, sliding_window: Optional[int] = None,
                 attn_logit_softcapping: Optional[float] = None, sinks: bool = False):
        super().__init__()
        assert num_heads % num_kv_heads == 0, "num_heads must be a multiple of num_kv_heads"
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.head_dim = head_dim or hidden_size // num_heads
        self.rope, self.rotary_dim = rope, rotary_dim or self.head_dim
        self.rope_theta, self.interleaved = rope_theta, interleaved
        self.sliding_window, self.softcap = sliding_window, attn_logit_softcapping
        self.q_proj = nn.Linear(hidden_size, num_heads * self.head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(hidden_size, num_kv_heads * self.head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(hidden_size, num_kv_heads * self.head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(num_heads * self.head_dim, hidden_size, bias=False)
        self.sinks = nn.Parameter(torch.zeros(num_heads)) if sinks else None
        self.kv_store: Optional[Callable[[Tensor], Tensor]] = None

    def forward(self, x: Tensor, key_padding_mask: Optional[Tensor] = None) -> Tensor:
        return self.step(x, None, key_padding_mask)[0]

    def step(self, x: Tensor, past: Optional[Tuple[Tensor, Tensor]] = None,
             key_padding_mask: Optional[Tensor] = None) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
        """Decoding, as HF runs it with past_key_values: x (B, L, E) at positions S0 .. S0 + L - 1
        after a cache past = (keys, values) (B, K, S0, D) of rotated keys (None: S0 = 0); the
        new keys and values are appended with torch.cat (a new tensor every step) and the
        queries attend bottom-right causally over all S = S0 + L. key_padding_mask is (B, S).
        Returns (output (B, L, E), (keys, values) (B, K, S, D))."""
        B, L, _ = x.shape
        start = 0 if past is None else past[0].shape[2]
        q = self.q_proj(x).view(B, L, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, L, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, L, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if self.rope:
            cos, sin = rotary_cos_sin(torch.arange(start, start + L), self.rotary_dim, self.rope_theta,
                                      self.interleaved, x.dtype)
            q, k = apply_rotary(q, cos, sin, self.interleaved), apply_rotary(k, cos, sin, self.interleaved)
        if self.kv_store is not None:
            k, v = self.kv_store(k), self.kv_store(v)
        if past is not None:
            k, v = torch.cat((past[0], k), dim=2), torch.cat((past[1], v), dim=2)
        S = k.shape[2]
        bias = torch.zeros(B, 1, L, S, dtype=x.dtype).masked_fill(
            causal_window_mask(L, S, "bottom_right", self.sliding_window), float("-inf"))
        if key_padding_mask is not None:
            bias = bias.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
        out = eager_attention(q, k, v, self.head_dim ** -0.5, self.softcap, bias, self.sinks)
        return self.o_proj(out.transpose(1, 2).reshape(B, L, self.num_heads * self.head_dim)), (k, v)

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
        print("LlamaAttention", tuple(LlamaAttention(32, 4, 2, sliding_window=4)(x).shape))
