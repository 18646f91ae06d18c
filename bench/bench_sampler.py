"""
bench/bench_sampler.py: our sampler (sampler.generate) measured in one run, one table per workload.

    python bench/bench_sampler.py                               # fixed shapes vs transformers generate (CUDA)
    python bench/bench_sampler.py --workload rl                 # RL-shaped lengths: static vs refill scheduling (CUDA)
    python bench/bench_sampler.py --device cpu --tiny           # smoke tests of this script on a CPU (seconds)
    python bench/bench_sampler.py --device cpu --tiny --workload rl

Both workloads use random weights (default: Qwen2.5-1.5B-shaped, bf16) and sample at temperature 1
(no top-k, no top-p).

--workload fixed: ours against transformers' `generate` with the same weights, P prompts x G samples =
R rows, all prompts --prompt-len random tokens, exactly --new-tokens tokens each (our stop_ids are empty
and transformers gets min_new_tokens = max_new_tokens, so neither stops early). Variants of ours: eager,
graph (CUDA graph), compile (torch.compile inside the CUDA graph); a "/full" suffix attends over the whole
cache buffer instead of each row's filled prefix. Rows per shape:
  tokens/s        R * new_tokens / wall time of the whole call (prefill included)
  ms/decode step  ours: the decode loop's time over its steps, measured inside generate (the one-off
                  CUDA-graph capture is outside the loop but inside tokens/s); transformers:
                  (time for N tokens - time for 1 token) / (N - 1)
  peak memory     weights + the largest extra allocation during the call (CUDA only)
  floor fraction  bandwidth floor / ms per step, where the floor = (weight bytes + KV-cache bytes at the
                  mean context length) / copy bandwidth measured in this run (bytes read + written / s)

--workload rl: --prompts prompts x --group samples, prompt lengths uniform in --prompt-lens, responses
capped at --new-tokens (default 3072), decoded on --slots rows (train.py's --rollout-batch). The lengths
are imposed by a bench-only device: a random model's next-token distribution is close to uniform, and
round(V / --mean-len) of its V ids are stop ids, so every step ends a response with probability about
1 / mean-len: lengths are about geometric (mean ~700 before the cap; ~1.2% reach 3072), like RL
rollouts where most answers end within a few hundred tokens and a few run to the limit. The measured
distribution is printed. Variants SCHEDULE/ATTENTION[/compile]: static/full is a static-batch sampler
with whole-buffer attention, refill/prefix the default, refill/prefix/compile the default with the decode
step torch.compile'd (on CUDA). Transformers is not in this table (its generate has no refill schedule;
the fixed workload compares it). Static variants run only the first
--static-batches batches of --slots samples (a rate: every batch is alike); refill runs the whole queue,
since its rate depends on the queue draining. Rows: utilization = useful tokens / rows computed, KV slots
read per useful token and against the minimum (each token attends its own prefix only), and what a kernel
reading every row up to the longest live row would read (CUDA graphs per length bucket), wall time and
tokens/s (whole call). All variants produce the same samples (checked on the samples they share).
"""
import argparse
import sys
import statistics
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project's modules
from model import ModelConfig, Transformer, load_model
from sampler import generate

# the --tiny model of the rl workload: big enough a vocabulary for the stop-id device (a random model with
# std 0.02 weights has logits of std ~0.16: a near-uniform next-token distribution over 4096 ids)
RL_TINY_CONFIG = dict(vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      tie_word_embeddings=True)


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--workload", default="fixed", choices=["fixed", "rl"])
    ap.add_argument("--model", default="qwen-1.5b", help="named architecture (random weights)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--tiny", action="store_true", help="smoke mode: tiny model and sizes (see the defaults)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--new-tokens", type=int, default=None, help="fixed: tokens per row (512); rl: the cap (3072)")
    g = ap.add_argument_group("fixed workload")
    g.add_argument("--shapes", default="8x8,64x8", help="comma-separated PROMPTSxSAMPLES")
    g.add_argument("--prompt-len", type=int, default=128)
    g.add_argument("--variants", default=None,
                   help="ours: comma-separated of eager, graph, compile, each optionally /full; default "
                        "graph,compile,graph/full on CUDA, eager on CPU")
    g.add_argument("--no-hf", action="store_true", help="skip transformers")
    g = ap.add_argument_group("rl workload")
    g.add_argument("--prompts", type=int, default=None, help="prompts (default 512; --tiny 64)")
    g.add_argument("--group", type=int, default=8, help="samples per prompt")
    g.add_argument("--slots", type=int, default=None, help="rows decoded at once (default 128; --tiny 16)")
    g.add_argument("--mean-len", type=float, default=None, help="mean response length before the cap (700; --tiny 70)")
    g.add_argument("--prompt-lens", default=None, help="LO,HI prompt lengths (64,320; --tiny 8,32)")
    g.add_argument("--static-batches", type=int, default=None,
                   help="batches of --slots samples the static variants run (default 2; 0 or --tiny: all)")
    g.add_argument("--rl-variants", default=None,
                   help="comma-separated SCHEDULE/ATTENTION[/compile] (default static/full,static/prefix,"
                        "refill/prefix, and refill/prefix/compile on CUDA)")
    args = ap.parse_args()
    rl, tiny = args.workload == "rl", args.tiny
    if tiny and not rl:
        args.model, args.shapes, args.prompt_len = "tiny", "2x2", 16
    args.new_tokens = args.new_tokens or ((300 if tiny else 3072) if rl else (16 if tiny else 512))
    args.prompts = args.prompts or (64 if tiny else 512)
    args.slots = args.slots or (16 if tiny else 128)
    args.mean_len = args.mean_len or (70.0 if tiny else 700.0)
    args.prompt_lens = tuple(map(int, (args.prompt_lens or ("8,32" if tiny else "64,320")).split(",")))
    if args.static_batches is None:
        args.static_batches = 0 if tiny else 2
    if args.variants is None:
        args.variants = "graph,compile,graph/full" if args.device.startswith("cuda") else "eager"
    if args.rl_variants is None:
        args.rl_variants = "static/full,static/prefix,refill/prefix" + (
            ",refill/prefix/compile" if args.device.startswith("cuda") else "")
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


def device_line(args, model, device, extra=""):
    import transformers
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    return (f"device: {name} | torch {torch.__version__} | transformers {transformers.__version__} | "
            f"model {args.model}: {model.config.num_params() / 1e9:.3f}B params, {args.dtype}, random weights"
            + extra)


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


# -----------------------------------------------------------------------------
# The fixed shapes, against transformers


def bench_fixed(args, model, device, dtype):
    cfg = model.config
    weight_bytes = cfg.num_params() * torch.finfo(dtype).bits // 8
    bw = copy_bandwidth(device, (1 << 30) if device.type == "cuda" else (1 << 26 if args.tiny else 1 << 28))
    hf = None if args.no_hf else hf_model(model, device, dtype)
    print(device_line(args, model, device, f" | copy bandwidth {bw / 1e9:.0f} GB/s (read + write)"))
    variants = [v for v in args.variants.split(",") if v]
    cols = [f"ours ({v})" for v in variants] + ([] if hf is None else ["transformers"])
    header = ["shape", "metric"] + cols + (["best ours / transformers"] if hf else [])
    rows = []
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
            kind, _, attention = v.partition("/")
            kw = dict(n_samples=G, max_new_tokens=new, temperature=1.0, stop_ids=(), seed=args.seed,
                      cuda_graph=kind in ("graph", "compile") and device.type == "cuda",
                      compile=kind == "compile", attention=attention or "prefix")
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
            if hf is not None:
                ref = res["transformers"]
                vals = [x for x in (get(r) for r in ok) if x is not None]
                cells.append("-" if not vals or get(ref) is None else f"{best(vals) / get(ref):.2f}x")
            rows.append([label, m_name] + cells)
            label = ""
    print(table(header, rows))


# -----------------------------------------------------------------------------
# The RL-shaped workload: static vs refill scheduling


def rl_workload(vocab_size: int, n_prompts: int, mean_len: float, prompt_lens=(64, 320), seed: int = 0):
    """(prompts, stop_ids): random prompts with lengths uniform in prompt_lens (inclusive) and
    round(vocab_size / mean_len) stop ids spread at random over the vocabulary (see the docstring)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(prompt_lens[0], prompt_lens[1] + 1, (n_prompts,), generator=g).tolist()
    prompts = [torch.randint(0, vocab_size, (n,), generator=g).tolist() for n in lengths]
    n_stop = max(1, round(vocab_size / mean_len))
    stop_ids = torch.randperm(vocab_size, generator=g)[:n_stop].sort().values.tolist()
    return prompts, stop_ids


def rl_tiny_model(seed: int = 0, dtype=torch.float32, device="cpu") -> Transformer:
    model = Transformer(ModelConfig(**RL_TINY_CONFIG)).to(device=device, dtype=dtype).eval()
    model.init_weights(generator=torch.Generator(device=device).manual_seed(seed))
    return model


def bench_rl(args, model, device):
    V = model.config.vocab_size
    prompts, stop_ids = rl_workload(V, args.prompts, args.mean_len, args.prompt_lens, args.seed)
    G, S, cap = args.group, args.slots, args.new_tokens
    kw = dict(n_samples=G, max_new_tokens=cap, stop_ids=stop_ids, seed=args.seed, slots=S)
    variants = [tuple(v.split("/")) + (("",) if v.count("/") == 1 else ()) for v in args.rl_variants.split(",") if v]
    n_static = len(prompts) if not args.static_batches else max(1, args.static_batches * S // G)
    results, lengths = {}, {}
    for schedule, attention, comp in variants:
        subset = prompts[:n_static] if schedule == "static" else prompts
        if device.type == "cuda":  # warm-up at the same shapes: every row ends at its first token
            warm = sorted(prompts, key=len)[-max(1, S // G):]
            generate(model, warm, **{**kw, "stop_ids": range(V)}, schedule=schedule, attention=attention,
                     compile=comp == "compile")
        stats = {}
        dt, extra, ro = measure(lambda: generate(model, subset, **kw, stats=stats, schedule=schedule,
                                                 attention=attention, compile=comp == "compile"), device)
        results[(schedule, attention, comp)] = (len(subset) * G, dt, extra, stats)
        lengths[(schedule, attention, comp)] = ro.lengths
    all_lengths = max(lengths.values(), key=len).tolist()
    same = all(torch.equal(x, y[:len(x)]) or torch.equal(y, x[:len(y)])
               for x in lengths.values() for y in lengths.values())
    q = statistics.quantiles(all_lengths, n=10)
    print(device_line(args, model, device))
    print(f"RL workload: {len(prompts)} prompts x {G} samples, prompt lengths uniform in "
          f"{args.prompt_lens[0]}..{args.prompt_lens[1]}, cap {cap} tokens, {S} slots; {len(stop_ids)} stop ids "
          f"of {V} (each step ends a response with probability ~1/{args.mean_len:.0f})")
    print(f"response lengths ({len(all_lengths)} samples): mean {statistics.mean(all_lengths):.0f}, "
          f"median {statistics.median(all_lengths):.0f}, p90 {q[8]:.0f}, max {max(all_lengths)}, "
          f"{sum(n == cap for n in all_lengths) / len(all_lengths):.1%} truncated at the cap | "
          f"same samples in every variant: {'yes' if same else 'NO'}")
    if device.type != "cuda":
        print("(on the CPU both attentions run the dense kernel over the whole buffer; the KV rows count what "
              "the CUDA kernels read)")
    cols = [f"{s} / {a}" + (" / compile" if c else "") for s, a, c in variants]
    base = None
    rows = {k: [] for k in ("samples run", "utilization (useful tokens / rows computed)",
                            "KV slots read per useful token", "KV slots read / minimum",
                            "KV read by a longest-live-row kernel / minimum", "decode steps", "wall s",
                            "tokens/s", "tokens/s vs first column", "peak memory GiB")}
    for key in variants:
        n, dt, extra, st = results[key]
        tps = st["useful_tokens"] / dt
        base = base or tps
        cells = [f"{n}", f"{st['useful_tokens'] / st['row_steps']:.3f}",
                 f"{st['kv_slots_read'] / st['useful_tokens']:,.0f}",
                 f"{st['kv_slots_read'] / st['kv_slots_min']:.2f}",
                 f"{st['kv_slots_read_longest'] / st['kv_slots_min']:.2f}", f"{st['steps']:,}", f"{dt:.1f}",
                 f"{tps:,.0f}", f"{tps / base:.2f}x", "-" if extra is None else f"{extra / 2**30:.2f}"]
        for row, cell in zip(rows.values(), cells):
            row.append(cell)
    print(table(["metric"] + cols, [[k] + v for k, v in rows.items()]))


def main():
    args = parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if args.workload == "rl" and args.tiny:
        args.model, args.dtype = "rl-tiny (bench.RL_TINY_CONFIG)", "float32"
        model = rl_tiny_model(args.seed, device=device)
    else:
        model = load_model(args.model, init="random", device=device, dtype=dtype, seed=args.seed).eval()
    if args.workload == "rl":
        bench_rl(args, model, device)
    else:
        bench_fixed(args, model, device, dtype)


if __name__ == "__main__":
    main()
