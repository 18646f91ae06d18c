"""
bench.py: our sampler (sampler.generate) against transformers' `generate`, same weights, same shapes, one
run, one table.

    python bench.py                               # Qwen2.5-1.5B-shaped random bf16 weights, CUDA
    python bench.py --device cpu --tiny           # smoke test of this script on a CPU (seconds)

Both sample at temperature 1 (no top-k, no top-p) for exactly --new-tokens tokens: our stop_ids are
empty and transformers gets min_new_tokens = max_new_tokens, so neither stops early.

Rows per shape (P prompts x G samples = R rows, all prompts --prompt-len random tokens):
  tokens/s        R * new_tokens / wall time of the whole call (prefill included)
  ms/decode step  ours: the decode loop's time over its steps, measured inside generate (the one-off
                  CUDA-graph capture is outside the loop but inside tokens/s); transformers:
                  (time for N tokens - time for 1 token) / (N - 1)
  peak memory     weights + the largest extra allocation during the call (CUDA only)
  floor fraction  bandwidth floor / ms per step, where the floor = (weight bytes + KV-cache bytes at the
                  mean context length) / copy bandwidth measured in this run (bytes read + written / s)
"""
import argparse
import time

import torch

from model import count_params, load_model
from sampler import generate


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--model", default="qwen-1.5b", help="named architecture (random weights)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--shapes", default="8x8,64x8", help="comma-separated PROMPTSxSAMPLES")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=512)
    ap.add_argument("--variants", default=None,
                    help="ours: comma-separated of eager, graph (CUDA graph), compile (torch.compile, inside the "
                         "CUDA graph on CUDA); "
                         "default graph,compile on CUDA, eager on CPU")
    ap.add_argument("--no-hf", action="store_true", help="skip transformers")
    ap.add_argument("--tiny", action="store_true", help="smoke mode: tiny model, shapes 2x2, 16 + 16 tokens")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.tiny:
        args.model, args.shapes, args.prompt_len, args.new_tokens = "tiny", "2x2", 16, 16
    if args.variants is None:
        args.variants = "graph,compile" if args.device.startswith("cuda") else "eager"
    return args


# -----------------------------------------------------------------------------
# Measurements


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_bandwidth(device, nbytes) -> float:
    """Bytes read + written per second by a device-to-device copy (the roofline a decode step runs on)."""
    x = torch.empty(nbytes, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    y.copy_(x)
    sync(device)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(4):
            y.copy_(x)
        sync(device)
        best = min(best, (time.perf_counter() - t) / 4)
    return 2 * nbytes / best


def measure(fn, device):
    """(wall seconds, extra peak bytes over what was allocated before) of fn()."""
    extra = None
    if device.type == "cuda":
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    dt = time.perf_counter() - t
    if device.type == "cuda":
        extra = torch.cuda.max_memory_allocated(device) - base
    return dt, extra, out


def hf_model(ours, device, dtype):
    """transformers' model class for our config, holding the very same weights."""
    import transformers
    d = ours.config.to_hf_dict(dtype)
    cls_cfg, cls = {"qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
                    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM)}[d.pop("model_type")]
    d.pop("architectures", None)
    with torch.device(device):
        hf = cls(cls_cfg(**d)).to(dtype).eval()
    hf.load_state_dict(ours.state_dict(), strict=True)
    return hf


# -----------------------------------------------------------------------------


def main():
    args = parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    model = load_model(args.model, init="random", device=device, dtype=dtype, seed=args.seed).eval()
    cfg = model.config
    weight_bytes = count_params(model) * torch.finfo(dtype).bits // 8
    bw = copy_bandwidth(device, (1 << 30) if device.type == "cuda" else (1 << 26 if args.tiny else 1 << 28))
    hf = None if args.no_hf else hf_model(model, device, dtype)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    import transformers
    print(f"device: {name} | torch {torch.__version__} | transformers {transformers.__version__} | "
          f"model {args.model}: {count_params(model) / 1e9:.3f}B params, {args.dtype}, random weights | "
          f"copy bandwidth {bw / 1e9:.0f} GB/s (read + write)")

    variants = [v for v in args.variants.split(",") if v]
    cols = [f"ours ({v})" for v in variants] + ([] if hf is None else ["transformers"])
    header = "| shape | metric | " + " | ".join(cols) + (" | best ours / transformers |" if hf else " |")
    rows = [header, "|" + " --- |" * (header.count("|") - 1)]
    new = args.new_tokens
    for shape in args.shapes.split(","):
        P, G = map(int, shape.lower().split("x"))
        R = P * G
        g = torch.Generator().manual_seed(args.seed)
        prompts = torch.randint(0, cfg.vocab_size, (P, args.prompt_len), generator=g)
        kv_bytes = (2 * cfg.num_hidden_layers * R * cfg.num_key_value_heads * cfg.head_dim
                    * torch.finfo(dtype).bits // 8 * (args.prompt_len + (new + 1) / 2))
        floor_ms = (weight_bytes + kv_bytes) / bw * 1e3
        res = {}  # column -> (tokens/s, ms/step, peak bytes) or an error string
        for v in variants:
            kw = dict(n_samples=G, max_new_tokens=new, temperature=1.0, stop_ids=(), seed=args.seed,
                      cuda_graph=v in ("graph", "compile") and device.type == "cuda",
                      compile=v == "compile")
            try:
                generate(model, prompts.tolist(), **kw)  # warm-up at the same shapes (compilation, cuBLAS)
                stats = {}
                dt, extra, _ = measure(lambda: generate(model, prompts.tolist(), stats=stats, **kw), device)
                res[f"ours ({v})"] = (R * new / dt, stats["decode_s"] / stats["steps"] * 1e3,
                                      None if extra is None else weight_bytes + extra)
            except Exception as e:  # report, keep measuring the others
                res[f"ours ({v})"] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:80]}"
        if hf is not None:
            ids = prompts.to(device)
            hf_kw = dict(attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0, top_k=0,
                         top_p=1.0, num_return_sequences=G, pad_token_id=0)

            def run(n):
                return hf.generate(ids, max_new_tokens=n, min_new_tokens=n, **hf_kw)

            with torch.inference_mode():
                run(4)  # warm-up
                t1, _, _ = measure(lambda: run(1), device)
                dt, extra, out = measure(lambda: run(new), device)
            assert out.shape == (R, args.prompt_len + new), out.shape
            res["transformers"] = (R * new / dt, (dt - t1) / (new - 1) * 1e3,
                                   None if extra is None else weight_bytes + extra)

        label = f"{P} x {G} = {R} rows, {args.prompt_len} + {new}"
        ok = [res[c] for c in cols if c != "transformers" and isinstance(res[c], tuple)]
        metrics = [("tokens/s", lambda r: r[0], "{:,.0f}", max),
                   ("ms / decode step", lambda r: r[1], "{:.2f}", min),
                   ("peak memory GiB", lambda r: None if r[2] is None else r[2] / 2**30, "{:.2f}", min),
                   (f"fraction of floor ({floor_ms:.2f} ms)", lambda r: floor_ms / r[1], "{:.1%}", max)]
        for m_name, get, fmt, best in metrics:
            cells = []
            for c in cols:
                r = res[c]
                val = get(r) if isinstance(r, tuple) else None
                cells.append(r if isinstance(r, str) else ("-" if val is None else fmt.format(val)))
            line = f"| {label} | {m_name} | " + " | ".join(cells) + " |"
            if hf is not None:
                ref = res["transformers"]
                vals = [get(r) for r in ok]
                vals = [x for x in vals if x is not None]
                ratio = "-" if not vals or get(ref) is None else f"{best(vals) / get(ref):.2f}x"
                line += f" {ratio} |"
            rows.append(line)
            label = ""
    print("\n".join(rows))


if __name__ == "__main__":
    main()
