"""runtime.estimate_memory against what a step really holds, measured on the CPU: the bytes autograd keeps
for backward (saved-tensor hooks) for a Qwen2.5-0.5B-shaped model in float32 and under bf16 autocast,
with and without activation checkpointing, and the bytes of the sampling copy of the weights.

The whole step's estimate against the process's peak memory is tests/test_train_cli.py's check.
"""
import copy

import pytest
import torch

import runtime
import train
from casp import candidate_stats_from_hidden
from model import MODEL_NAMES, ModelConfig, Transformer

TOL = 0.10     # the estimate's activations within 10% of the measured saved bytes


def saved_bytes(model, tokens, compute_dtype):
    """Bytes of the tensors autograd saves for backward during the training forward (hidden states, then
    the chunked loss's statistics) -> (bytes that scale with the tokens, bytes of the bf16 weight copies
    autocast made). Each storage is counted once; parameters are not saved bytes (they exist anyway)."""
    param_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    param_shapes = {tuple(p.shape) for p in model.parameters()}
    seen, copies = {}, {}

    def pack(t):
        key = t.untyped_storage().data_ptr()
        if key not in param_storages:
            # a 2-D tensor of a weight's shape in bf16 is autocast's copy of that weight
            (copies if tuple(t.shape) in param_shapes and t.dtype == torch.bfloat16 else seen)[key] = \
                t.untyped_storage().nbytes()
        return t

    B, T = tokens.shape
    mask = torch.ones(B, T - 1, dtype=torch.bool)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=compute_dtype == "bfloat16"):
            hidden = model(tokens[:, :-1], return_hidden=True)                   # (B, T-1, D)
        candidate_stats_from_hidden(hidden, model.output_weight, tokens[:, 1:], mask,
                                    matmul_dtype=torch.bfloat16 if compute_dtype == "bfloat16" else None)
    return sum(seen.values()), sum(copies.values())


@pytest.mark.parametrize("grad_checkpoint", [False, True])
@pytest.mark.parametrize("compute_dtype", ["float32", "bfloat16"])
def test_activation_estimate_matches_saved_bytes(compute_dtype, grad_checkpoint):
    """A Qwen2.5-0.5B-shaped model (2 of its blocks, a 1000-id vocabulary) on 2 x 128 tokens: the
    estimate's `activations` are within 10% of the bytes autograd keeps for backward, measured with
    saved-tensor hooks, in float32 and under bf16 autocast (where the residual stream stays float32).
    With checkpointing the measurement is the forward's saved bytes (each block's float32 input) plus one
    block's own saved bytes, measured alone: what backward holds while it recomputes a block. Without
    checkpointing under autocast, the bf16 weight copies backward keeps are within 5% under the
    estimate's 2 bytes per block parameter. (Halving the activation factors fails this test.)"""
    cfg = copy.deepcopy(MODEL_NAMES["qwen-0.5b"][1])
    cfg.num_hidden_layers, cfg.vocab_size = 2, 1000
    torch.manual_seed(0)
    model = Transformer(cfg)
    model.init_weights()
    model.train()
    tokens = torch.randint(0, cfg.vocab_size, (2, 129))                             # 2 x 128 tokens scored
    model.gradient_checkpointing = grad_checkpoint
    measured, copies = saved_bytes(model, tokens, compute_dtype)
    if grad_checkpoint:   # + one block recomputed in backward, with everything it saves
        block = Transformer(copy.deepcopy(cfg))
        block.model.layers = block.model.layers[:1]
        block.train()
        one, _ = saved_bytes(block, tokens, compute_dtype)
        no_block = Transformer(copy.deepcopy(cfg))
        no_block.model.layers = no_block.model.layers[:0]
        no_block.train()
        measured += one - saved_bytes(no_block, tokens, compute_dtype)[0]     # that block's part only
    compute_bytes = 2 if compute_dtype == "bfloat16" else 4
    parts = runtime.estimate_memory(cfg, rollout_rows=1, total_rows=2, max_prompt_len=1, max_response_len=127,
                                    micro_batch_tokens=256, compute_bytes=compute_bytes, sampling_bytes=0,
                                    grad_checkpoint=grad_checkpoint)
    ratio = parts["activations"] / measured
    print(f"{compute_dtype}, checkpointing {grad_checkpoint}: measured {measured / 256 / 1e3:.1f} kB/token, "
          f"estimated {parts['activations'] / 256 / 1e3:.1f} kB/token (x{ratio:.3f}); weight copies "
          f"{copies / 1e6:.1f} MB, estimated {parts['autocast weight copies'] / 1e6:.1f} MB")
    assert abs(ratio - 1) < TOL
    # the estimate counts every block parameter; backward keeps the copies of the matrices it needs
    assert copies == parts["autocast weight copies"] == 0 or 1 <= parts["autocast weight copies"] / copies < 1.05


@pytest.mark.parametrize("dtype,fsdp", [("bfloat16", False), ("float32", True), ("float32", False)])
def test_sampling_copy_is_counted(tiny_dir, dtype, fsdp, monkeypatch):
    """The pre-flight (train.memory_check -> runtime.estimate_memory) counts the sampling copy of the weights
    as exactly the bytes of the copy train.make_sampling_copy makes: a bf16 copy for bf16 training, a
    float32 copy under FSDP (the sharded weights cannot sample), none when float32 training samples with
    the training weights themselves; and the estimated peak includes it."""
    from model import load_model
    args = train.get_args(["--model", str(tiny_dir), "--device", "cpu", "--dtype", dtype]
                          + (["--fsdp"] if fsdp else []))
    config = ModelConfig.from_json(tiny_dir / "config.json")
    seen = []

    def spy(*a, **kw):
        seen.append(runtime.estimate_memory(*a, **kw))
        return seen[-1]

    monkeypatch.setattr(train, "estimate_memory", spy)
    dist = runtime.Dist()
    train.memory_check(config, dist, 32, train.step_config(args), prompts_per_step=args.prompts_per_step,
                       fsdp=args.fsdp, grad_checkpoint=args.grad_checkpoint, force=False)
    model = load_model(tiny_dir)
    policy = train.make_sampling_copy(model, args.dtype, args.fsdp, dist.device)
    copy_bytes = 0 if policy is model else sum(p.numel() * p.element_size() for p in policy.parameters())
    assert copy_bytes == {"bfloat16": 2, "float32": 4 if fsdp else 0}[dtype] * config.num_params()
    parts = seen[0]
    assert parts["sampling copy of the weights"] == copy_bytes
    rollout = parts["KV cache"] + parts["sampler distributions"] + parts["prefill activations"]
    assert parts["peak"] >= copy_bytes + parts["weights (float32 master)"] + rollout
