"""
bench/bench_train.py: the update phase of one RL step (forward + backward + AdamW, activation checkpointing),
ours against Hugging Face transformers, on the same model shape and batch, in one run.

    python bench/bench_train.py                         # Qwen2.5-1.5B shape, B=16, T=1024, one GPU
    python bench/bench_train.py --device cpu --smoke    # a tiny shape, to check the script itself

Ours: float32 master weights and AdamW state (fused), bf16 autocast compute, per-block activation
checkpointing, the CaSP loss applied to the final hidden states chunk by chunk (casp_loss_from_hidden:
the float32 (B, T, V) logits never exist whole; bf16 operands, float32 logits).
transformers: its Qwen2ForCausalLM with gradient checkpointing, bf16 weights and bf16 AdamW state (the
all-bf16 setting, which at lr 1e-6 loses most updates to rounding), full float32 logits and
the same GRPO-style token loss on them.
Both see identical random weights and tokens. `--compile on,off` (the default): each side also with every
decoder block torch.compile'd (`nn.Module.compile`: forward and backward through inductor; train.py
itself runs eagerly). Prints one table: tokens/s and peak memory per row, and ours / transformers for
each compile setting.
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project's modules
from casp import casp_loss_from_hidden
from model import MODEL_NAMES, ModelConfig, Transformer, load_model


def make_batch(B, T, vocab, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(0, vocab, (B, T + 1), generator=g)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[:, : T // 8] = False  # a prompt part that the loss does not score
    adv = torch.randn(B, generator=g)
    return seq.to(device), mask.to(device), adv.to(device)


def timed(fn, iters, device):
    """Mean seconds per call after one warm-up call (CUDA-synchronised)."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / iters
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return dt, peak


def compile_blocks(layers):
    """torch.compile every decoder block in place (one compiled graph serves all: same code, same shapes)."""
    for block in layers:
        block.compile()


def ours_step_fn(config, state, batch, device, chunk_size, compile=False):
    model = Transformer(config).to(device)
    model.load_state_dict(state)
    model.gradient_checkpointing = True
    model.train()
    if compile:
        compile_blocks(model.model.layers)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=device.type == "cuda")
    seq, mask, adv = batch
    old = torch.zeros(mask.shape, device=device)  # the first mini-batch of a step: rho = exp(logp)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            hidden = model(seq[:, :-1], return_hidden=True)                               # (B, T-1, D)
        loss, _ = casp_loss_from_hidden(hidden, model.output_weight, seq[:, 1:], old, adv, mask,
                                        chunk_size=chunk_size, matmul_dtype=torch.bfloat16)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return model, step


def hf_step_fn(config, state, batch, device, compile=False):
    import transformers
    hf_cfg = transformers.Qwen2Config(**{k: v for k, v in config.to_hf_dict().items()
                                         if k not in ("architectures", "model_type")})
    model = transformers.Qwen2ForCausalLM(hf_cfg).to(device=device, dtype=torch.bfloat16)
    model.load_state_dict(state, strict=True)  # the same weights as ours, key for key
    getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
    model.config.use_cache = False
    model.train()
    if compile:
        compile_blocks(model.model.layers)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    seq, mask, adv = batch

    def step():
        opt.zero_grad(set_to_none=True)
        logits = model(seq[:, :-1]).logits.float()                               # (B, T, V) float32
        logp = torch.log_softmax(logits, -1).gather(-1, seq[:, 1:, None])[..., 0]  # (B, T)
        rho = torch.exp(logp - logp.detach())
        loss = -(adv[:, None] * rho)[mask].sum() / mask.sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return model, step


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    p.add_argument("--model", default="qwen-1.5b")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--chunk-size", type=int, default=4096, help="tokens per output-layer chunk (ours)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--smoke", action="store_true", help="tiny shape (checks the script, not the speed)")
    p.add_argument("--skip-hf", action="store_true")
    p.add_argument("--compile", default="on,off", help="comma-separated: on (every block torch.compile'd), off")
    args = p.parse_args()
    device = torch.device(args.device)
    if args.smoke:
        config = ModelConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
        args.batch, args.seq, args.iters = 2, 64, 1
    else:
        config = MODEL_NAMES[args.model][1]
    ref = load_model(args.model, init="random") if not args.smoke else None
    if ref is None:
        ref = Transformer(config)
        ref.init_weights()
    config = ref.config
    state = {k: v.clone() for k, v in ref.state_dict().items()}
    del ref
    batch = make_batch(args.batch, args.seq, config.vocab_size, device)
    tokens = args.batch * args.seq
    print(f"{config.num_params() / 1e9:.3f}B parameters, B={args.batch}, T={args.seq}, device {device}"
          + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else ""))

    rows = []
    for comp in [c.strip() for c in args.compile.split(",") if c.strip()]:
        on = {"on": True, "off": False}[comp]
        sides = [("ours (fp32 master, bf16 compute, chunked loss)", ours_step_fn, (args.chunk_size,))]
        if not args.skip_hf:
            sides.append(("transformers (bf16 weights+AdamW, fp32 logits)", hf_step_fn, ()))
        result = []
        for name, make, extra in sides:
            try:
                model, step = make(config, state, batch, device, *extra, compile=on)
                dt, peak = timed(step, args.iters, device)
                result.append((f"{name}, compile {comp}", tokens / dt, peak))
                del model, step
            except Exception as e:  # report it in the table, measure the rest
                result.append((f"{name}, compile {comp}: failed ({type(e).__name__}: "
                               f"{str(e).splitlines()[0][:60] if str(e) else ''})", float("nan"), float("nan")))
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rows += result
        if len(result) == 2:
            rows.append((f"ours / transformers, compile {comp}", result[0][1] / result[1][1],
                         result[0][2] / result[1][2]))

    print(f"| {'update phase':68s} | {'tokens/s':>10s} | {'peak GiB':>9s} |")
    print(f"| {'-' * 68} | {'-' * 10} | {'-' * 9} |")
    for name, tps, peak in rows:
        if name.startswith("ours / transformers"):
            print(f"| {name:68s} | {tps:9.2f}x | {peak:8.0%} |")
        else:
            print(f"| {name:68s} | {tps:10.0f} | {peak:9.2f} |")


if __name__ == "__main__":
    main()
