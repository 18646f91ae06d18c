"""
model.py: a Llama / Qwen2 decoder-only transformer written by hand, that loads and saves
Hugging Face checkpoints exactly.

One architecture, two switches:
    Qwen2  = Llama + bias on the q/k/v projections (`attention_bias` below)
    tied   = the output layer shares the input embedding matrix (`tie_word_embeddings`)
Everything else is shared: RMSNorm before attention and MLP, rotary position embeddings (RoPE) in the
Hugging Face "half-split" convention, grouped-query attention (GQA) through
`torch.nn.functional.scaled_dot_product_attention`, and a SwiGLU MLP.

    h   = embed(tokens)                                      # (B, T, D)
    for each block:
        h = h + o_proj(attn(rope(q(norm1(h))), rope(k(norm1(h))), v(norm1(h))))
        h = h + down(silu(gate(norm2(h))) * up(norm2(h)))
    logits = lm_head(norm(h))                                # (B, T, V)

Parameter names are the Hugging Face ones (`model.layers.3.self_attn.q_proj.weight`, ...), so loading a
checkpoint is an identity map: build on the meta device, then `load_state_dict(strict=True, assign=True)`.

The KV cache is NOT model state: a `KVCache` (preallocated tensors) is passed into `forward`, which writes
the new keys/values at each row's own position and advances the row lengths. Rows may hold prompts of
different lengths: the position of a token is the row's current length, and a query attends to the keys
at positions <= its own. That one rule covers right-padded batched prefill, single-token decoding and
rows copied from a shared prompt (`KVCache.copy_rows_`: a GRPO group samples G answers to one prompt).

`forward(..., return_hidden=True)` returns the final normed hidden states instead of logits, so a loss
can apply the output layer chunk by chunk: the float32 (B, T, 151936) logits of a Qwen micro-batch would
cost gigabytes (casp.py never builds them whole).

Departures from transformers: none in the math. Things we do not implement (and reject with an error
naming the config field): sliding-window attention, bias on o_proj or the MLP, rope types other than
default and llama3, activations other than SiLU.
"""
from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from cli import atomic_path, write_atomic

# -----------------------------------------------------------------------------
# Configuration


SUPPORTED_ARCHITECTURES = {"Qwen2ForCausalLM": "qwen2", "LlamaForCausalLM": "llama"}


@dataclass
class ModelConfig:
    """Architecture fields, named and valued exactly as in the checkpoint's own config.json."""
    architecture: str = "Qwen2ForCausalLM"
    vocab_size: int = 151936
    hidden_size: int = 1536
    intermediate_size: int = 8960
    num_hidden_layers: int = 28
    num_attention_heads: int = 12
    num_key_value_heads: int = 2
    head_dim: int | None = None          # None: hidden_size // num_attention_heads
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None     # None, or {"rope_type": "llama3", "factor": ..., ...}
    attention_bias: bool = True          # bias on q/k/v (Qwen2: always; Llama: config field)
    tie_word_embeddings: bool = False
    bos_token_id: int | list | None = None
    eos_token_id: int | list | None = None
    # every other key of config.json, written back unchanged by save_model
    extra: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                             f"num_key_value_heads={self.num_key_value_heads}")

    @classmethod
    def from_hf_dict(cls, d: dict, source: str = "config.json") -> "ModelConfig":
        """Read a Hugging Face config dict; reject what this file does not implement, naming the field."""
        d = dict(d)
        archs = d.get("architectures") or []
        arch = archs[0] if archs else {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}.get(
            d.get("model_type", ""), "")
        if arch not in SUPPORTED_ARCHITECTURES:
            raise ValueError(f"{source}: unsupported architecture {arch or d.get('model_type')!r} "
                             f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
        family = SUPPORTED_ARCHITECTURES[arch]
        if d.get("hidden_act", "silu") != "silu":
            raise ValueError(f"{source}: hidden_act={d['hidden_act']!r} is not supported (only 'silu')")
        if d.get("use_sliding_window", False):
            raise ValueError(f"{source}: use_sliding_window=true is not supported")
        if d.get("mlp_bias", False):
            raise ValueError(f"{source}: mlp_bias=true is not supported")
        if family == "llama" and d.get("attention_bias", False):
            raise ValueError(f"{source}: attention_bias=true on Llama (o_proj bias) is not supported")
        if any(t != "full_attention" for t in d.get("layer_types") or []):
            raise ValueError(f"{source}: layer_types other than full_attention are not supported")
        # Checkpoints spell RoPE two ways: rope_theta + rope_scaling (the hub's checkpoints), or one
        # rope_parameters dict (transformers >= 5). Both land in rope_theta / rope_scaling here.
        rope_params = d.get("rope_parameters") or {}
        rope_theta = d.get("rope_theta", rope_params.get("rope_theta", 10000.0))
        scaling = d.get("rope_scaling") or rope_params
        rope_type = scaling.get("rope_type", scaling.get("type", "default"))
        if rope_type not in ("default", "llama3"):
            raise ValueError(f"{source}: rope type {rope_type!r} is not supported (supported: default, llama3)")
        scaling = None if rope_type == "default" else {k: v for k, v in scaling.items() if k != "rope_theta"}
        known = {f.name for f in fields(cls)} | {"architectures", "rope_parameters", "hidden_act"}
        try:
            return cls(
                architecture=arch,
                vocab_size=d["vocab_size"],
                hidden_size=d["hidden_size"],
                intermediate_size=d["intermediate_size"],
                num_hidden_layers=d["num_hidden_layers"],
                num_attention_heads=d["num_attention_heads"],
                num_key_value_heads=d.get("num_key_value_heads", d["num_attention_heads"]),
                head_dim=d.get("head_dim"),
                max_position_embeddings=d.get("max_position_embeddings", 4096),
                rms_norm_eps=d.get("rms_norm_eps", 1e-6),
                rope_theta=float(rope_theta),
                rope_scaling=scaling,
                attention_bias=True if family == "qwen2" else False,
                tie_word_embeddings=d.get("tie_word_embeddings", False),
                bos_token_id=d.get("bos_token_id"),
                eos_token_id=d.get("eos_token_id"),
                extra={k: v for k, v in d.items() if k not in known},
            )
        except KeyError as e:
            raise ValueError(f"{source}: required field {e.args[0]!r} is missing") from None

    @classmethod
    def from_json(cls, path) -> "ModelConfig":
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no config.json (not a Hugging Face model directory?)") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from None
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})") from None
        if not isinstance(d, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(d).__name__}")
        return cls.from_hf_dict(d, source=str(path))

    def to_hf_dict(self, dtype: torch.dtype | None = None) -> dict:
        family = SUPPORTED_ARCHITECTURES[self.architecture]
        d = dict(self.extra)
        d.update(
            architectures=[self.architecture],
            model_type=family,
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            max_position_embeddings=self.max_position_embeddings,
            rms_norm_eps=self.rms_norm_eps,
            rope_theta=self.rope_theta,
            rope_scaling=self.rope_scaling,
            hidden_act="silu",
            tie_word_embeddings=self.tie_word_embeddings,
        )
        if family == "llama":
            d.update(attention_bias=False, mlp_bias=False)
        else:
            d.setdefault("use_sliding_window", False)
        d.pop("rope_parameters", None)  # ours above is the single source of truth
        for k in ("bos_token_id", "eos_token_id"):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        if dtype is not None:  # transformers < 5 reads torch_dtype, >= 5 reads dtype
            d["torch_dtype"] = d["dtype"] = str(dtype).removeprefix("torch.")
        return d

    def num_params(self) -> int:
        D, I, L, V = self.hidden_size, self.intermediate_size, self.num_hidden_layers, self.vocab_size
        q, kv = self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        attn = D * q + 2 * D * kv + q * D + (q + 2 * kv if self.attention_bias else 0)
        block = attn + 3 * D * I + 2 * D
        return V * D * (1 if self.tie_word_embeddings else 2) + L * block + D


# -----------------------------------------------------------------------------
# Named models: short name -> Hugging Face repo id, plus the architecture fields so that
# `init="random"` can build the real shape without weights. A real config.json always wins.

_QWEN_BASE = dict(architecture="Qwen2ForCausalLM", attention_bias=True, rms_norm_eps=1e-6,
                  bos_token_id=151643, eos_token_id=151643)
MODEL_NAMES: dict[str, tuple[str | None, ModelConfig]] = {
    "qwen-0.5b": ("Qwen/Qwen2.5-0.5B-Instruct", ModelConfig(
        **_QWEN_BASE, vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
        num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
        rope_theta=1e6, tie_word_embeddings=True)),
    "qwen-1.5b": ("Qwen/Qwen2.5-Math-1.5B", ModelConfig(
        **_QWEN_BASE, vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
        num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=4096,
        rope_theta=10000.0, tie_word_embeddings=True)),
    "qwen-7b": ("Qwen/Qwen2.5-Math-7B", ModelConfig(
        **_QWEN_BASE, vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
        num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=4096,
        rope_theta=10000.0, tie_word_embeddings=False)),
    "qwen-32b": ("Qwen/Qwen2.5-32B", ModelConfig(
        **{**_QWEN_BASE, "rms_norm_eps": 1e-5}, vocab_size=152064, hidden_size=5120,
        intermediate_size=27648, num_hidden_layers=64, num_attention_heads=40, num_key_value_heads=8,
        max_position_embeddings=131072, rope_theta=1e6, tie_word_embeddings=False)),
    "llama-3b": ("meta-llama/Llama-3.2-3B-Instruct", ModelConfig(
        architecture="LlamaForCausalLM", attention_bias=False, vocab_size=128256, hidden_size=3072,
        intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24, num_key_value_heads=8,
        head_dim=128, max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        tie_word_embeddings=True, bos_token_id=128000, eos_token_id=[128001, 128008, 128009])),
    # The project's own small model for CPU runs. Its weights and its character-level tokenizer are
    # made by the demo's supervised warm start (train.py) in casp_home()/tiny; the vocabulary size is
    # that tokenizer's.
    "tiny": (None, ModelConfig(
        architecture="Qwen2ForCausalLM", attention_bias=True, vocab_size=64, hidden_size=128,
        intermediate_size=384, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=512, rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=True)),
}


def casp_home() -> Path:
    """Where the project keeps what it makes itself (the tiny model): $CASP_HOME or ~/.cache/casp."""
    return Path(os.environ.get("CASP_HOME", Path.home() / ".cache" / "casp"))


def hf_cache_dirs() -> list[Path]:
    """The standard Hugging Face hub cache locations, in the order transformers looks at them."""
    dirs = []
    if os.environ.get("HF_HUB_CACHE"):
        dirs.append(Path(os.environ["HF_HUB_CACHE"]))
    if os.environ.get("HF_HOME"):
        dirs.append(Path(os.environ["HF_HOME"]) / "hub")
    dirs.append(Path.home() / ".cache" / "huggingface" / "hub")
    return dirs


def resolve_model_path(name_or_path) -> Path:
    """A directory with config.json: an explicit path, or a named model found in the HF cache.

    Never downloads. When a named model's weights are not on disk, the error prints the exact command.
    """
    p = Path(os.path.expanduser(str(name_or_path)))
    if p.is_dir():
        return p
    name = str(name_or_path)
    if name not in MODEL_NAMES:
        if "/" in name or p.suffix or name.startswith("."):
            raise FileNotFoundError(f"model path {p} does not exist")
        raise ValueError(f"unknown model name {name!r}: use one of {', '.join(MODEL_NAMES)} "
                         "or a path to a Hugging Face model directory")
    repo_id, _ = MODEL_NAMES[name]
    if repo_id is None:  # the project's own tiny model
        local = casp_home() / name
        if (local / "config.json").is_file():
            return local
        raise FileNotFoundError(f"model {name!r} not found at {local}: run `python train.py` once "
                                "(its warm start creates it), or set CASP_HOME")
    for hub in hf_cache_dirs():
        snaps = hub / ("models--" + repo_id.replace("/", "--")) / "snapshots"
        found = sorted(snaps.glob("*/config.json"), key=lambda f: f.stat().st_mtime) if snaps.is_dir() else []
        if found:
            return found[-1].parent
    looked = ", ".join(str(d) for d in hf_cache_dirs())
    raise FileNotFoundError(
        f"weights of {name!r} ({repo_id}) not found in the Hugging Face cache ({looked}).\n"
        f"Download them with:\n    hf download {repo_id}\n"
        f"(`hf` comes with `pip install -U huggingface_hub`; older releases call it `huggingface-cli download`), "
        f"or pass a local directory with --model /path/to/{repo_id.split('/')[-1]}")


# -----------------------------------------------------------------------------
# Building blocks


class RMSNorm(nn.Module):
    """x / rms(x) * weight, normalised in float32 (as transformers does) and cast back."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_inv_freq(config: ModelConfig, device=None) -> torch.Tensor:
    """Inverse frequencies theta^(-2i/d), i < d/2, with Llama-3's frequency-dependent rescaling."""
    d = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64, device=device).float() / d))
    s = config.rope_scaling
    if s is None:
        return inv_freq
    # llama3: long wavelengths are slowed down by `factor`, short ones kept, the band between blended
    factor, lo, hi = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old_len = s["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / lo, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - lo) / (hi - lo)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / hi) & (wavelen <= old_len / lo)
    return torch.where(medium, blended, scaled)


def rope_cos_sin(inv_freq, positions, dtype):
    """cos/sin tables for the given positions: (B, T) -> two (B, 1, T, head_dim) tensors."""
    freqs = positions[..., None].float() * inv_freq             # (B, T, d/2), float32 as in HF
    emb = torch.cat([freqs, freqs], dim=-1)                     # (B, T, d): the half-split layout
    return emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]


def apply_rope(x, cos, sin):
    """Rotate pairs (x_i, x_{i+d/2}) (Hugging Face half-split convention, not interleaved pairs)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class KVCache:
    """Preallocated keys and values of every layer, passed into `Transformer.forward`.

    k, v: (n_layers, B, n_kv_heads, max_len, head_dim). lengths: (B,) number of positions filled per
    row. A forward pass over T new tokens writes them at positions lengths..lengths+T-1 of each row and
    then advances `lengths` by T. After a right-padded prefill the caller sets `lengths` to the true
    prompt lengths: the padding slots are then overwritten by the first generated tokens.

    empty: True while nothing has been written (a fresh cache: every row at length 0), known on the host
    without a sync. A forward of several tokens into an empty cache is plain causal attention over those
    tokens (the prefill), which SDPA runs in its fused kernels; `forward` and `copy_rows_` clear it.
    Code that sets `lengths` of a fresh cache by hand and then forwards several tokens must clear it too.
    """

    def __init__(self, config: ModelConfig, batch_size: int, max_len: int, device=None, dtype=torch.float32):
        shape = (config.num_hidden_layers, batch_size, config.num_key_value_heads, max_len, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
        # Optional attention kernel for one-token decoding, attend(q, k, v) -> (B, H, 1, head_dim), given
        # this layer's whole cache k, v (B, Hkv, max_len, head_dim). It must attend row b to positions
        # 0..lengths[b] only, as the masked kernel in Attention.forward does. None: that masked kernel.
        # The sampler sets a length-aware one here (sampler.PrefixAttention).
        self.attend = None
        self.empty = True

    @property
    def max_len(self):
        return self.k.shape[3]

    def layer(self, i: int) -> "LayerCache":
        """Layer i's keys and values (views) with what Attention.forward needs to know about the cache."""
        return LayerCache(self.k[i], self.v[i], self.empty, self.attend)

    def narrow(self, start: int, length: int) -> "KVCache":
        """Rows start..start+length-1 as a KVCache sharing this one's memory (writes go through): lets a
        sampler prefill prompts chunk by chunk and copy each chunk into its slice of one big cache."""
        view = KVCache.__new__(KVCache)
        view.k, view.v = self.k.narrow(1, start, length), self.v.narrow(1, start, length)
        view.lengths = self.lengths.narrow(0, start, length)
        view.attend, view.empty = self.attend, self.empty
        return view

    def copy_rows_(self, src: "KVCache", rows: torch.Tensor):
        """Row i of self becomes row rows[i] of src (e.g. rows = arange(P).repeat_interleave(G) copies each
        prompt's prefill into its G sample rows). Only the filled prefix is copied."""
        n = int(src.lengths.max()) if src.lengths.numel() else 0  # host sync, once per rollout
        rows = rows.to(src.k.device)
        self.k[:, :, :, :n] = src.k[:, rows, :, :n]
        self.v[:, :, :, :n] = src.v[:, rows, :, :n]
        self.lengths.copy_(src.lengths[rows])
        self.empty = False


class LayerCache(NamedTuple):
    """One layer's part of a KVCache. Passed to each block instead of the layer's index: a compiled frame
    (the decode step breaks its graph at a custom kernel) then gets the same argument types at every
    layer, and compiles once whatever the depth; a Python int would be a constant, compiled per layer."""
    k: torch.Tensor          # (B, Hkv, max_len, hd) this layer's keys
    v: torch.Tensor          # (B, Hkv, max_len, hd) this layer's values
    empty: bool              # KVCache.empty: nothing written yet, every row starts at position 0
    attend: object           # KVCache.attend: the one-token kernel, or None


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = (config.num_attention_heads,
                                                       config.num_key_value_heads, config.head_dim)
        D, bias = config.hidden_size, config.attention_bias
        self.q_proj = nn.Linear(D, self.n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(D, self.n_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(D, self.n_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, D, bias=False)

    def forward(self, x, cos, sin, cache: LayerCache | None = None, positions=None):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)     # (B, H, T, hd)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, hd)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            # write the new keys/values at each row's own positions
            idx = positions[:, None, :, None].expand(B, self.n_kv_heads, T, self.head_dim)
            kc, vc = cache.k, cache.v                                                   # (B, Hkv, S, hd)
            kc.scatter_(2, idx, k.to(kc.dtype))
            vc.scatter_(2, idx, v.to(vc.dtype))
        if cache is None or (T > 1 and cache.empty):    # (T first: a compiled frame guards on shapes only)
            # training / full recompute, and the prefill of right-padded prompts into an empty cache
            # (positions 0..T-1 in every row): plain causal attention over the new tokens (right padding
            # never leaks into real tokens, since padding comes after them). is_causal without a mask
            # keeps SDPA's fused kernels; a boolean mask with enable_gqa would leave it only the math
            # kernel on CUDA, which materialises (B, H, T, T) float32 scores per layer.
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:
            # attend over the whole buffer: a query at position p may see keys at positions <= p of its
            # row (later slots are unwritten or stale padding). The mask has shape (B, 1, T, max_len).
            if T == 1 and cache.attend is not None:
                # the cache's own one-token kernel (KVCache.attend), e.g. the sampler's length-aware one
                y = cache.attend(q, kc.to(q.dtype), vc.to(q.dtype))                     # (B, H, 1, hd)
            else:
                key_pos = torch.arange(kc.shape[2], device=x.device)
                mask = key_pos[None, None, None, :] <= positions[:, None, :, None]      # (B, 1, T, S)
                if T == 1 and self.n_heads != self.n_kv_heads:
                    # one-token decoding: the G query heads that share a kv head attend as G query rows
                    # of that head (head h uses kv head h // G, as in GQA). Same math; but with a mask,
                    # SDPA's fused CUDA kernels reject unequal head counts, and the math fallback of
                    # enable_gqa would copy the whole cache G times per layer and step.
                    G = self.n_heads // self.n_kv_heads
                    y = F.scaled_dot_product_attention(q.reshape(B, self.n_kv_heads, G, self.head_dim),
                                                       kc.to(q.dtype), vc.to(q.dtype), attn_mask=mask)
                    y = y.reshape(B, self.n_heads, 1, self.head_dim)                    # (B, H, 1, hd)
                else:
                    y = F.scaled_dot_product_attention(q, kc.to(q.dtype), vc.to(q.dtype), attn_mask=mask,
                                                       enable_gqa=True)
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)              # (B, T, H*hd)
        return self.o_proj(y)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        D, I = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(D, I, bias=False)
        self.up_proj = nn.Linear(D, I, bias=False)
        self.down_proj = nn.Linear(I, D, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, cache: LayerCache | None = None, positions=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache, positions)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    """The `model.` prefix of the Hugging Face parameter names."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


# -----------------------------------------------------------------------------
# The model


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = Decoder(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.gradient_checkpointing = False
        # RoPE inverse frequencies, computed in float32 per device. Deliberately not a buffer: a buffer
        # would be cast by `model.to(torch.bfloat16)` and lose the positions' precision.
        self._inv_freq: dict[torch.device, torch.Tensor] = {}

    def inv_freq(self, device) -> torch.Tensor:
        if device not in self._inv_freq:
            self._inv_freq[device] = rope_inv_freq(self.config, device)
        return self._inv_freq[device]

    def tie_weights(self):
        """Re-share the output layer with the embedding (`assign=True` loading replaces parameters)."""
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @property
    def output_weight(self) -> torch.Tensor:
        """(V, D) matrix of the output layer, for losses that apply it chunk by chunk."""
        return self.lm_head.weight

    def forward(self, tokens, kv_cache: KVCache | None = None, return_hidden: bool = False):
        """tokens (B, T) long -> logits (B, T, V), or with return_hidden the final normed hidden states
        (B, T, D), for a loss that applies the output layer (`output_weight`) chunk by chunk. (Under
        FSDP2 the root module's parameters, the output weight among them, stay gathered from forward to
        backward, so the caller may read `output_weight` after forward.)

        With `kv_cache`, token t of row b sits at position kv_cache.lengths[b] + t, and the cache lengths
        are advanced by T afterwards. Without it, positions are 0..T-1 (causal, no cache).
        """
        B, T = tokens.shape
        if kv_cache is None:
            positions = torch.arange(T, device=tokens.device).expand(B, T)             # (B, T)
        else:
            positions = kv_cache.lengths[:, None] + torch.arange(T, device=tokens.device)  # (B, T)
        x = self.model.embed_tokens(tokens)                                            # (B, T, D)
        cos, sin = rope_cos_sin(self.inv_freq(x.device), positions, x.dtype)                     # (B, 1, T, hd)
        for i, block in enumerate(self.model.layers):
            cache = None if kv_cache is None else kv_cache.layer(i)   # views, not the index (LayerCache)
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                # keep only the block's input; recompute its activations in backward (~1/3 more compute)
                x = checkpoint(block, x, cos, sin, cache, positions, use_reentrant=False)
            else:
                x = block(x, cos, sin, cache, positions)
        if kv_cache is not None:
            kv_cache.lengths += T
            kv_cache.empty = False
        x = self.model.norm(x)                                                         # (B, T, D)
        return x if return_hidden else self.lm_head(x)                                 # (B, T, V)

    def init_weights(self, std: float = 0.02, generator: torch.Generator | None = None):
        """Random initialisation (as transformers' `initializer_range`), for speed and memory tests."""
        for name, p in self.named_parameters():
            if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
                nn.init.ones_(p)
            elif name.endswith(".bias"):
                nn.init.zeros_(p)
            else:
                with torch.no_grad():
                    p.normal_(0.0, std, generator=generator)


# -----------------------------------------------------------------------------
# Loading and saving in the Hugging Face layout


class BadModelFile(ValueError):
    """Weights that cannot be used: a truncated or unreadable file, a tensor missing, unexpected or of the
    wrong shape, NaN or infinite values. The message names the file and the tensor."""


MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024   # the format's own limit on the JSON header


def safetensors_header(f: Path) -> dict:
    """The header of a safetensors file ({name: {dtype, shape, data_offsets}}), after checking that the
    file holds every byte the header promises: a truncated copy is named here instead of failing deep in
    the reader (or, with the tensors' bytes cut off, not at all)."""
    size = f.stat().st_size
    with open(f, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little") if size >= 8 else -1
        if not 0 < n <= min(size - 8, MAX_SAFETENSORS_HEADER):
            raise BadModelFile(f"{f}: truncated or not a safetensors file ({size:,} bytes"
                               + (f", header of {n:,} bytes)" if n >= 0 else ")"))
        raw = fh.read(n)
    try:
        header = json.loads(raw)
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        raise BadModelFile(f"{f}: not a safetensors file (unreadable header)") from None
    if 8 + n + end > size:
        raise BadModelFile(f"{f}: truncated: {size:,} bytes, its header describes {8 + n + end:,}")
    return header


def _read_safetensors(path: Path, device) -> tuple[dict[str, torch.Tensor], dict[str, Path]]:
    """(every tensor of the model folder, the file each came from), each file checked whole first."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    index = path / "model.safetensors.index.json"
    single = path / "model.safetensors"
    if single.is_file():
        files = [single]
    elif index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            files = [path / f for f in sorted(set(weight_map.values()))]
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise BadModelFile(f"{index}: not a valid safetensors index ({e})") from None
        for f in files:
            if not f.is_file():
                raise FileNotFoundError(f"{f}: shard named in {index} is missing")
    else:
        raise FileNotFoundError(f"{path}: no model.safetensors or model.safetensors.index.json")
    state, origin = {}, {}
    for f in files:
        safetensors_header(f)
        try:
            part = load_file(str(f), device=str(device))
        except SafetensorError as e:
            raise BadModelFile(f"{f}: unreadable ({e})") from None
        state.update(part)
        origin.update(dict.fromkeys(part, f))
    return state, origin


def check_weights(state: dict[str, torch.Tensor], origin: dict[str, Path], model: "Transformer", config_file: Path):
    """Refuse (BadModelFile) weights that do not fit the architecture of config.json, tensor by tensor
    (missing, unexpected, wrong shape: expected vs found), or that hold NaN or infinite values (a model
    that trains on them logs `H nan`, scores 0 and saves more NaN)."""
    tied = model.config.tie_word_embeddings
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}
    missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    files = ", ".join(sorted({str(f) for f in origin.values()})) or str(config_file.parent)
    arch = f"the {model.config.architecture} architecture of {config_file}"
    if missing or unexpected:
        listed = lambda names: ", ".join(names[:5]) + (f" ... ({len(names)})" if len(names) > 5 else "")
        raise BadModelFile(f"{files}: the tensors do not match {arch}"
                           + (f"; missing: {listed(missing)}" if missing else "")
                           + (f"; unexpected: {listed(unexpected)}" if unexpected else ""))
    for k, v in state.items():
        if tuple(v.shape) != expected[k]:
            hint = ""
            if k in ("model.embed_tokens.weight", "lm_head.weight") and v.ndim == 2 and v.shape[0] != expected[k][0]:
                hint = f" (config.json says vocab_size {expected[k][0]}, the weights have {v.shape[0]} rows)"
            raise BadModelFile(f"{origin[k]}: tensor {k} has shape {list(v.shape)}, expected "
                               f"{list(expected[k])} from {config_file}{hint}")
    for k, v in state.items():
        # one read of the tensor and no full-size temporary: the sum of finite weights is finite
        if v.is_floating_point() and not torch.isfinite(v.sum(dtype=torch.float32)):
            bad = int((~torch.isfinite(v)).sum())
            if bad:
                raise BadModelFile(f"{origin[k]}: tensor {k} holds {bad:,} NaN or infinite value(s) of "
                                   f"{v.numel():,}: refusing to load it")


def load_model(name_or_path, device="cpu", dtype=torch.float32, init: str = "checkpoint",
               seed: int = 0) -> Transformer:
    """Load a Hugging Face Qwen2/Llama checkpoint (or `init="random"` weights of a named architecture).

    The model is built on the meta device (no memory, no init cost), then the checkpoint tensors are
    assigned as parameters. Every file is checked whole and every tensor against the architecture before
    it is used (check_weights): a damaged folder is one BadModelFile naming the file and the tensor.
    """
    device = torch.device(device)
    if init == "random":
        try:
            path = resolve_model_path(name_or_path)
            config = ModelConfig.from_json(path / "config.json")   # a real config.json wins
        except FileNotFoundError:
            if str(name_or_path) not in MODEL_NAMES:
                raise
            config = MODEL_NAMES[str(name_or_path)][1]
        model = Transformer(config).to(device=device, dtype=dtype)
        model.init_weights(generator=torch.Generator(device=device).manual_seed(seed))
        return model
    if init != "checkpoint":
        raise ValueError(f"init={init!r}: expected 'checkpoint' or 'random'")

    path = resolve_model_path(name_or_path)
    config = ModelConfig.from_json(path / "config.json")
    state, origin = _read_safetensors(path, device)
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # some exports keep the shared matrix twice
    with torch.device("meta"):
        model = Transformer(config)
    check_weights(state, origin, model, path / "config.json")
    for k, v in state.items():
        if v.is_floating_point():
            state[k] = v.to(dtype)
    if config.tie_word_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()
    return model


def save_model(model: Transformer, path, max_shard_bytes: int = 5 * 1024**3, dtype=None,
               tokenizer_dir=None):
    """Write config.json + safetensors (sharded above `max_shard_bytes`) in the Hugging Face layout, and
    with `tokenizer_dir` the tokenizer and template files of that folder (`copy_tokenizer_files`), so the
    folder loads as it is in transformers (`AutoTokenizer` + `apply_chat_template`), serving engines and
    eval.py.

    Each file is written to a temporary name and renamed, so an interrupted save never leaves a
    half-written file under the final name.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)   # transformers re-ties it from the embedding
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    state = {k: v.contiguous().cpu() for k, v in state.items()}
    save_dtype = next(iter(state.values())).dtype

    shards, current, size = [], {}, 0
    for k, v in state.items():
        nbytes = v.numel() * v.element_size()
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[k] = v
        size += nbytes
    shards.append(current)

    def atomic_save(tensors, name):
        with atomic_path(path / name) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "pt"})

    for stale in list(path.glob("model*.safetensors")) + [path / "model.safetensors.index.json"]:
        if stale.exists():
            stale.unlink()
    if len(shards) == 1:
        atomic_save(shards[0], "model.safetensors")
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            atomic_save(shard, name)
            weight_map.update({k: name for k in shard})
        total = sum(v.numel() * v.element_size() for v in state.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        write_atomic(path / "model.safetensors.index.json", json.dumps(index, indent=2))
    write_atomic(path / "config.json", json.dumps(model.config.to_hf_dict(save_dtype), indent=2))
    if tokenizer_dir is not None:
        copy_tokenizer_files(tokenizer_dir, path)


# Everything a model folder holds for its tokenizer and its prompts, by name. An explicit list, not
# "everything but the weights": model folders also hold files that must not follow a fine-tuned model
# (Meta's original/*.pth, gigabytes; pytorch_model*.bin; the base model's README model card), and the
# copy should stay small and predictable. config.json is save_model's own; generation_config.json is
# copied because it declares the stop ids (load_tokenizer reads them) and the sampling defaults.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "merges.txt", "vocab.txt", "tokenizer.model",        # slow-tokenizer vocabularies
    "chat_template.jinja", "chat_template.json", "generation_config.json",
)
CHAT_TEMPLATE_DIR = "additional_chat_templates"   # named extra templates, *.jinja (transformers >= 4.54)


def copy_tokenizer_files(src_dir, dst_dir) -> list[str]:
    """Copy the tokenizer and chat-template files of `src_dir` (a folder, or its tokenizer.json) into
    `dst_dir`: every name of TOKENIZER_FILES the folder has, and additional_chat_templates/*.jinja.
    Each file is copied to a temporary name and renamed. Returns the copied names (relative paths).
    Copying a folder onto itself is a no-op."""
    import shutil

    src, dst = Path(src_dir), Path(dst_dir)
    if src.is_file():
        src = src.parent
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: tokenizer folder not found")
    dst.mkdir(parents=True, exist_ok=True)
    if src.resolve() == dst.resolve():
        return []
    names = [n for n in TOKENIZER_FILES if (src / n).is_file()]
    names += sorted(f"{CHAT_TEMPLATE_DIR}/{f.name}" for f in (src / CHAT_TEMPLATE_DIR).glob("*.jinja")
                    if f.is_file())
    for name in names:
        target = dst / name
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            shutil.copyfile(src / name, tmp)
    return names


# -----------------------------------------------------------------------------
# Tokenizer and chat formats
#
# The prompt is the checkpoint's own chat template when it has one, rendered the way transformers'
# `apply_chat_template` renders it (same Jinja sandbox, globals, filters and variables), so a model sees
# the prompt it was tuned on, default system message included (Qwen2.5-Instruct, Qwen2.5-Math, SmolLM2).
# A tokenizer without a template (the tiny model's, a bare tokenizer.json) falls back to a built-in format
# picked from its special tokens: ChatML, or Llama 3's headers. `Tokenizer.chat_source` says which was used.

# Where a model folder keeps its template, in the order transformers' AutoTokenizer reads it
# (chat_template.jinja wins over tokenizer_config.json; chat_template.json is the processors' legacy file,
# which AutoTokenizer ignores, so it is read last).
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "tokenizer_config.json", "chat_template.json")
# The named special tokens transformers passes to every template as variables (its SPECIAL_TOKENS_ATTRIBUTES)
TEMPLATE_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                           "mask_token")


class Tokenizer:
    """A `tokenizers.Tokenizer` plus the chat format and stop tokens.

    chat_format: the built-in family detected from the special tokens ("chatml", "llama3"; None when the
    tokenizer has neither but brings its own template). chat_template: the template text (None: built-in
    format). chat_source: what `render_chat` uses, for logs: "template:chat_template.jinja",
    "template:tokenizer_config.json", "template:chat_template.json", "builtin:chatml" or "builtin:llama3".
    folder: the folder the files came from (what `copy_tokenizer_files` copies into a checkpoint).

    vocab_size is the number of ids the tokenizer knows (Qwen2.5: 151,665), which is smaller than the
    embedding rows (151,936): ids in between must never be sampled.
    """

    def __init__(self, tok, chat_format: str | None, stop_ids: list[int], source: str = "",
                 chat_template: str | None = None, template_vars: dict | None = None,
                 chat_source: str | None = None):
        self.tok, self.chat_format, self.stop_ids, self.source = tok, chat_format, stop_ids, source
        self.folder = Path(source).parent if source else None
        self.chat_template, self.template_vars = chat_template, dict(template_vars or {})
        if chat_template is None and chat_format not in ("chatml", "llama3"):
            raise ValueError(f"{source}: no chat template and no built-in chat format")
        self.chat_source = chat_source or (f"template:{source}" if chat_template is not None
                                           else f"builtin:{chat_format}")
        self._compiled = None
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    @functools.cached_property
    def longest_token_chars(self) -> int:
        """Characters of the longest vocabulary entry: no token covers more text (data.encode_prompts
        skips a text that surely cannot fit the prompt budget without tokenizing it)."""
        return max(map(len, self.tok.get_vocab(with_added_tokens=True)))

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.tok.token_to_id(token)

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = True, **template_kwargs) -> str:
        """The prompt as text: the checkpoint's template if it has one (whatever default system message it
        inserts), else ChatML / Llama 3 headers, which insert no system message. `template_kwargs` are extra
        template variables (e.g. Qwen3's enable_thinking), as in transformers; the built-in formats have none."""
        if self.chat_template is not None:
            return self._render_template(messages, add_generation_prompt, template_kwargs)
        out = []
        if self.chat_format == "chatml":
            for m in messages:
                out.append(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n")
            if add_generation_prompt:
                out.append("<|im_start|>assistant\n")
        else:  # llama3
            out.append("<|begin_of_text|>")
            for m in messages:
                out.append(f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content'].strip()}<|eot_id|>")
            if add_generation_prompt:
                out.append("<|start_header_id|>assistant<|end_header_id|>\n\n")
        return "".join(out)

    def encode_chat(self, messages: list[dict], add_generation_prompt: bool = True, **template_kwargs) -> list[int]:
        """Token ids of `render_chat`, encoded as transformers' apply_chat_template(tokenize=True) does: the
        special-token strings in the text become their ids, and nothing is added around them."""
        return self.encode(self.render_chat(messages, add_generation_prompt, **template_kwargs))

    def _render_template(self, messages, add_generation_prompt, template_kwargs):
        import jinja2

        if self._compiled is None:
            self._compiled = compile_chat_template(self.chat_template)
        # as transformers: keys whose value is None are dropped (templates test `is defined`, not None)
        messages = [{k: v for k, v in m.items() if v is not None} for m in messages]
        try:
            return self._compiled.render(messages=messages, tools=None, documents=None,
                                         add_generation_prompt=add_generation_prompt,
                                         **{**self.template_vars, **template_kwargs})
        except jinja2.TemplateError as e:
            raise ValueError(f"{self.chat_source}: the chat template failed: {e}") from e


def compile_chat_template(text: str):
    """Compile a chat template in the environment transformers renders it in (utils/chat_template_utils.py):
    a sandbox that cannot mutate its inputs, trim_blocks and lstrip_blocks, the loop-control extension,
    `raise_exception(msg)`, `strftime_now(fmt)`, and a `tojson` that does not HTML-escape (json.dumps,
    ensure_ascii=False). `{% generation %}` blocks (assistant-mask markers) render their body unchanged."""
    from datetime import datetime

    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlock(jinja2.ext.Extension):
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.Scope(body).set_lineno(lineno)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationBlock, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env.from_string(text)


def _token_content(v):
    """A special token as tokenizer_config.json stores it: a string, or an AddedToken dict."""
    v = v.get("content") if isinstance(v, dict) else v
    return v if isinstance(v, str) else None


def _read_json(path: Path) -> dict:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    return d if isinstance(d, dict) else {}


def _default_template(value):
    """tokenizer_config.json's `chat_template`: a string, or named templates (a list of {name, template},
    or a dict); transformers uses the one named "default" when no tools are passed."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        value = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
    if isinstance(value, dict) and isinstance(value.get("default"), str):
        return value["default"]
    return None


def find_chat_template(folder: Path) -> tuple[str | None, str | None]:
    """(template text, file it came from) of a model folder, or (None, None): chat_template.jinja, else the
    `chat_template` field of tokenizer_config.json, else that of chat_template.json."""
    for name in CHAT_TEMPLATE_FILES:
        f = folder / name
        if not f.is_file():
            continue
        text = f.read_text(encoding="utf-8") if name.endswith(".jinja") else _default_template(
            _read_json(f).get("chat_template"))
        if text:
            return text, name
    return None, None


def template_variables(folder: Path) -> dict:
    """The special tokens a template sees as variables (bos_token, eos_token, ...), as transformers passes
    them: from tokenizer_config.json, else from the legacy special_tokens_map.json; unset ones are left
    out (undefined in the template). Departure: a tokenizer class's built-in defaults for tokens the files
    do not name are unknown here (real checkpoints name the ones their templates use)."""
    out = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        f = folder / name
        if not f.is_file():
            continue
        d = _read_json(f)
        for key in TEMPLATE_SPECIAL_TOKENS:
            if key in d and key not in out:
                out[key] = _token_content(d[key])
    return {k: v for k, v in out.items() if v is not None}


def _ids_of(tok, names) -> list[int]:
    return [i for i in (tok.token_to_id(n) for n in names) if i is not None]


def load_tokenizer(path, chat_template: str = "auto") -> Tokenizer:
    """Load tokenizer.json from a model directory (or the file itself) with the folder's chat template,
    and collect the stop ids the checkpoint declares (generation_config.json's and config.json's
    eos_token_id, tokenizer_config.json's eos_token) plus the built-in format's end-of-turn tokens.

    chat_template: "auto" uses the folder's template when it has one (`find_chat_template`), else the
    built-in format of its special tokens; "builtin" always uses the built-in format.
    """
    from tokenizers import Tokenizer as HFTokenizer

    if chat_template not in ("auto", "builtin"):
        raise ValueError(f"chat_template={chat_template!r}: expected 'auto' or 'builtin'")
    p = Path(os.path.expanduser(str(path)))
    if not p.exists() and str(path) in MODEL_NAMES:
        p = resolve_model_path(path)
    file = p / "tokenizer.json" if p.is_dir() else p
    if not file.is_file():
        raise FileNotFoundError(f"{file}: tokenizer.json not found")
    try:
        tok = HFTokenizer.from_file(str(file))
    except Exception as e:
        raise ValueError(f"{file}: not a valid tokenizers file ({e})") from None
    folder = file.parent

    template, template_file = find_chat_template(folder) if chat_template == "auto" else (None, None)
    if tok.token_to_id("<|im_start|>") is not None:
        fmt, turn_end = "chatml", ["<|im_end|>", "<|endoftext|>"]
    elif tok.token_to_id("<|start_header_id|>") is not None:
        fmt, turn_end = "llama3", ["<|eot_id|>", "<|end_of_text|>", "<|eom_id|>"]
    elif template is not None:
        fmt, turn_end = None, []
    else:
        raise ValueError(f"{file}: no chat template in the folder and no built-in chat format "
                         f"(no <|im_start|> or <|start_header_id|> token)")

    stop = set(_ids_of(tok, turn_end))
    for name in ("generation_config.json", "config.json"):
        f = folder / name
        if f.is_file():
            eos = _read_json(f).get("eos_token_id")
            stop.update([eos] if isinstance(eos, int) else (eos or []))
    f = folder / "tokenizer_config.json"
    if f.is_file():
        eos = _token_content(_read_json(f).get("eos_token"))
        if eos is not None:
            stop.update(_ids_of(tok, [eos]))
    if not stop:
        raise ValueError(f"{file}: no stop token (no built-in format, and no eos_token_id or eos_token declared)")
    return Tokenizer(tok, fmt, sorted(stop), source=str(file), chat_template=template,
                     template_vars=template_variables(folder) if template is not None else None,
                     chat_source=f"template:{template_file}" if template is not None else f"builtin:{fmt}")


if __name__ == "__main__":
    # quick look at the named architectures
    for name, (repo, cfg) in MODEL_NAMES.items():
        print(f"{name:10s} {repo or '(project)':36s} {cfg.num_params() / 1e9:6.3f}B params")
