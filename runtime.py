"""
runtime.py: where a training run lives: its processes (FSDP2), its memory, its folder and checkpoints.

train.py holds the algorithm; everything here is the machinery around it, in four parts:

    processes    Dist (rank, world, device; sums/maxes across ranks), setup_dist, shard_model
    memory       estimate_memory (the peak of a step, broken down), preflight (refuse a run that cannot
                 fit before anything large is allocated), peak_memory_gb (what a step really used)
    run folder   lock_run_folder (one writer: a second run is refused naming the holder's PID),
                 claim_run_folder (never clobber a run; a folder without a checkpoint starts over),
                 check_resume_config (a resumed run is the same experiment), start_metrics_file,
                 StopSignals (SIGINT/SIGTERM: save at the next step boundary)
    checkpoints  save_checkpoint / resume_checkpoint / latest_checkpoint: atomic, exact resume (weights,
                 AdamW state, RNG states, data position), readable by transformers as they are; a damaged
                 checkpoint is named, moved aside, and the newest complete one is used instead

Nothing read from a run folder can run code: optimizer files are loaded with torch.load(weights_only=True)
(tensors and plain values only) and everything else is JSON or safetensors.
"""
from __future__ import annotations

import contextlib
import json
import os
import pickle
import random
import re
import resource
import shlex
import shutil
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError

from cli import Stopped, UserError, atomic_path, write_atomic
from model import BadModelFile, ModelConfig, Transformer, copy_tokenizer_files, save_model

# -----------------------------------------------------------------------------
# Processes (FSDP2). Single process: rank 0 of 1, no process group.


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self):
        return self.rank == 0

    def barrier(self):
        if self.world > 1:
            torch.distributed.barrier()

    def all_sum(self, x: float) -> float:
        """Sum a number over ranks (a collective: every rank must call it)."""
        return self._reduce(x, "SUM")

    def all_max(self, x: float) -> float:
        return self._reduce(x, "MAX")

    def _reduce(self, x: float, op: str) -> float:
        if self.world == 1:
            return x
        t = torch.tensor([float(x)], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t, op=getattr(torch.distributed.ReduceOp, op))
        return t.item()


def setup_dist(fsdp: bool, device: str) -> Dist:
    if not fsdp:
        return Dist(device=torch.device(device))
    import torch.distributed as dist
    dist.init_process_group("nccl" if str(device).startswith("cuda") else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(dev)
    return Dist(rank, world, dev)


def shard_model(model: Transformer, compute_dtype) -> Transformer:
    """FSDP2: one shard group per block plus the root; float32 master parameters stay sharded, each
    block's parameters are all-gathered in `compute_dtype` for its forward/backward and the gradients
    reduce-scattered in float32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    mp = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
    for block in model.model.layers:
        fully_shard(block, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model


# -----------------------------------------------------------------------------
# Memory: the estimate of a step's peak, checked before anything large is allocated
#
# A step holds, per rank (P parameters, world W; bytes):
#   always     float32 master weights 4P/W, AdamW moments 8P/W (after the first step), the sampling copy
#              of the weights (2P in bf16; none when sampling uses the float32 weights themselves), and
#              the step's rollout on the host (token ids, masks, log-probs, top-N records, the batch)
#   rollout    the KV cache of the rows sampled at once (slots x (prompt + response) positions), the
#              (rows, V) float32 next-token distributions of the sampler, the prefill's activations (one
#              layer's at a time, no (T, T) scores: prefill attends causally in SDPA's fused kernels)
#   update     float32 gradients 4P/W, the micro-batch's activations (all layers, or one layer plus the
#              block inputs with --grad-checkpoint), under bf16 autocast without checkpointing the bf16
#              copies of the block weights that autocast makes and backward keeps (2 bytes per block
#              parameter; none under FSDP, whose gathered weights are bf16 already), the chunked loss's
#              (chunk, V) float32 buffers and, in bf16, its bf16 copy of the output weight (casp.py)
# The peak is `always + max(rollout, update)`: the cache is freed before the update starts.
#
# Activations, per token and block, as counts of (token, width) tensors that a block keeps for
# backward: fitted to the bytes that saved-tensor hooks record for a Qwen2.5-0.5B, a Qwen2.5-1.5B and
# a Llama-3.2-3B-shaped block on the CPU, in float32 and under bf16 autocast (each within 1.5%;
# tests/test_memory.py measures and compares). A block keeps its input, the float32 residual stream
# (4 bytes per value whatever the compute dtype: also what a checkpointed block keeps). Under bf16
# autocast RMSNorm and RoPE stay float32 too, so a block keeps 3 more float32 (T, D) tensors besides
# its bf16 ones.
# The whole step's estimate was checked against measured peaks on the CPU (tests/test_train_cli.py:
# -15% / +35% allowed).

ACT_PER_TOKEN_HIDDEN = 7      # (T, D) tensors in the compute dtype: norm outputs, q, attention output...
ACT_PER_TOKEN_MLP = 4         # (T, I) tensors: gate, up, act(gate), their product
ACT_PER_TOKEN_KV = 1.5        # (T, K+V width) tensors: keys and values (after RoPE), per K+V width
AUTOCAST_FLOAT32_HIDDEN = 3   # (T, D) float32 tensors a block keeps besides those under bf16 autocast
FINAL_NORM_HIDDEN = 3         # (T, D) float32 tensors after the last block: final norm, the loss's input
LOSS_CHUNK = 1024             # rows of the chunked output layer in casp.py
LOSS_CHUNK_COPIES = 3         # (chunk, V) float32 buffers alive at once: logits, softmax, its gradient
SAMPLER_VOCAB_COPIES = 4      # (rows, V) float32 buffers of one decode step: logits, probs, sort, cdf
PREFILL_TOKENS = 32768        # sampler.generate's default padded prompt tokens per prefill chunk


def estimate_memory(config: ModelConfig, *, rollout_rows: int, total_rows: int, max_prompt_len: int,
                    max_response_len: int, micro_batch_tokens: int, compute_bytes: int, sampling_bytes: int,
                    grad_checkpoint: bool, world: int = 1, top_n: int = 3, mini_batches: int = 1) -> dict[str, float]:
    """The peak of one training step in bytes, by part (see the table above). rollout_rows: rows sampled
    at once (--rollout-batch); total_rows: rows of the step on this rank (prompts x G / world), split
    into `mini_batches`; max_prompt_len: the longest prompt that can occur (the data's, if shorter);
    sampling_bytes: bytes per parameter of the sampling copy (0 when sampling uses the training weights)."""
    P, D, I, L = config.num_params(), config.hidden_size, config.intermediate_size, config.num_hidden_layers
    V, kv_width = config.vocab_size, 2 * config.num_key_value_heads * config.head_dim   # K and V
    S = max_prompt_len + max_response_len
    T = min(micro_batch_tokens, -(-total_rows // mini_batches) * S)   # a micro-batch holds at most a mini-batch
    per_token_layer = activation_bytes_per_token(config, compute_bytes)
    autocast = compute_bytes < 4 and world == 1   # bf16 autocast over float32 weights (not FSDP's bf16 ones)
    block_params = P - V * D * (1 if config.tie_word_embeddings else 2) - D
    parts = {
        "weights (float32 master)": 4 * P / world,
        "AdamW moments (float32)": 8 * P / world,
        "sampling copy of the weights": sampling_bytes * P,
        # host: per sampled token ids 8 + mask 1 + log-prob 4 + entropy 4 + top-N ids and probs 12N;
        # the padded batch: ids 8 + mask 1 + sampler and old log-probs 8 per position
        "rollout records and batch (host)": total_rows * (max_response_len * (17 + 12 * top_n) + S * 17),
        "KV cache": rollout_rows * S * L * kv_width * compute_bytes,
        "sampler distributions": rollout_rows * V * 4 * SAMPLER_VOCAB_COPIES,
        "prefill activations": min(PREFILL_TOKENS, rollout_rows * max_prompt_len) * (4 * D + 3 * I) * compute_bytes,
        "gradients (float32)": 4 * P / world,
        # checkpointed: the float32 input of every block, and one block's activations while it is recomputed
        "activations": T * ((4 * D * L + per_token_layer if grad_checkpoint else per_token_layer * L)
                            + 4 * FINAL_NORM_HIDDEN * D),
        "autocast weight copies": 2 * block_params if autocast and not grad_checkpoint else 0,
        "loss chunks": min(T, LOSS_CHUNK) * V * 4 * LOSS_CHUNK_COPIES + (2 * V * D if autocast else 0),
    }
    always = sum(parts[k] for k in list(parts)[:4])
    rollout = parts["KV cache"] + parts["sampler distributions"] + parts["prefill activations"]
    update = (parts["gradients (float32)"] + parts["activations"] + parts["autocast weight copies"]
              + parts["loss chunks"])
    parts["peak"] = always + max(rollout, update)
    return parts


def activation_bytes_per_token(config: ModelConfig, compute_bytes: int) -> float:
    """Bytes one block keeps for backward per token (see the factors above): compute_bytes 4 is float32,
    2 is bf16 autocast over float32 weights."""
    D, I = config.hidden_size, config.intermediate_size
    kv_width = 2 * config.num_key_value_heads * config.head_dim
    per = (ACT_PER_TOKEN_HIDDEN * D + ACT_PER_TOKEN_MLP * I + ACT_PER_TOKEN_KV * kv_width) * compute_bytes
    return per + 4 * D + (4 * AUTOCAST_FLOAT32_HIDDEN * D if compute_bytes < 4 else 0)   # + the float32 input


def available_memory(device: torch.device) -> tuple[float, str]:
    """(bytes free, what was measured): the GPU's free memory, or the machine's MemAvailable on the CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return float(free), f"free memory of {torch.cuda.get_device_name(device)}"
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024, "available RAM (MemAvailable)"
    except OSError:
        pass
    return float("inf"), "available RAM (unknown on this system)"


def preflight(parts: dict[str, float], device: torch.device) -> str:
    """Refuse (UserError) when the estimated peak exceeds the free memory; else a one-line summary."""
    free, what = available_memory(device)
    gb = lambda b: f"{b / 1e9:.1f} GB"
    if parts["peak"] <= free:
        return f"[memory] estimated peak {gb(parts['peak'])} of {gb(free)} {what}"
    table = "\n".join(f"    {k:<34} {gb(v):>9}" for k, v in parts.items() if k != "peak")
    raise UserError(
        f"the estimated peak memory of a step, {gb(parts['peak'])}, exceeds the {what}, {gb(free)}:\n{table}\n"
        f"  (peak = the first four + the larger of the next three (rollout) and the last four (update))\n"
        f"Shrink it with --rollout-batch (rows sampled at once: KV cache), --max-response-len, "
        f"--micro-batch-tokens (activations), --grad-checkpoint, or --prompts-per-step; --force runs anyway.")


def current_memory(device: torch.device) -> float:
    """Bytes in use now: tensors on the GPU, or the process's resident set on the CPU (torch, the tokenizer
    and the data already take a few hundred MB there before the first weight is allocated)."""
    if device.type == "cuda":
        return float(torch.cuda.memory_allocated(device))
    with open("/proc/self/statm") as f:
        return float(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_memory_gb(device: torch.device) -> float:
    """The step's peak memory: on CUDA the allocator's peak since the step began (reset per step); on the
    CPU the process's peak resident set size so far (the kernel keeps no per-step peak)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9   # Linux: KiB


# -----------------------------------------------------------------------------
# The run folder: one writer, never clobbered, resumed only as the same experiment

RUN_MARKERS = ("config.json", "metrics.jsonl", "latest")
LOCK_FILE = ".lock"
DAMAGED = "damaged-"           # prefix of a damaged checkpoint moved aside by resume_checkpoint
# what a crash can leave behind: a half-written checkpoint and the temporary files of atomic writes
# (cli.atomic_path: .NAME.tmp)
STALE = (".tmp-ckpt-*", ".*.tmp")
# fields that may change on --resume: how long the run goes and how often it evaluates and saves, and
# settings that change memory or speed but not the samples or the update (rows sampled at once, tokens
# per micro-batch, activation checkpointing, the device)
RESUMABLE_CHANGES = {"steps", "eval_every", "eval_prompts", "save_every", "keep", "resume", "overwrite",
                     "force", "out", "device", "rollout_batch", "micro_batch_tokens", "grad_checkpoint",
                     "warm_start_steps"}


class WriteFailed(UserError):
    """A file of the run could not be written (disk full, a file-size limit, an I/O error): nothing
    written before is lost, and the message says what was being written."""


def _why(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    # torch's zip writer reports a short write as "[enforce fail at inline_container.cc] unexpected pos ...",
    # safetensors as "Error while serializing: I/O error: ..."
    return f"{str(e).strip().splitlines()[0][:120]}: is the disk full or a file-size limit reached?"


_locks: dict[Path, tuple[int, list[Path]]] = {}   # run folder -> (lock file descriptor, folders we made)


def lock_run_folder(out: Path):
    """Make `out` and hold an exclusive lock on out/.lock until the run ends (release_run_folders) or the
    process does: a run folder has one writer. flock: the kernel drops the lock however the process ends
    (SIGKILL and crashes included), so a lock file left behind never blocks a later run; a second run is
    refused naming the holder's PID. (On NFS, Linux maps flock to the server's byte-range locks.)"""
    import fcntl
    made = [p for p in [out, *out.parents] if not p.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise UserError(f"--out {out}: cannot write there ({e.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise UserError(f"{out} is in use by another run (PID {holder}): a run folder has one writer; wait "
                        "for that run to end (or stop it), or choose another --out") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _locks[out] = (fd, made)


def release_run_folders():
    """Drop the locks of this process's run folders; a folder this process made and left empty (a run
    refused before it wrote anything) is removed again, so a failed start leaves nothing behind."""
    for out, (fd, made) in _locks.items():
        with contextlib.suppress(OSError):
            if made and [p.name for p in out.iterdir()] == [LOCK_FILE]:
                (out / LOCK_FILE).unlink()
                for p in made:
                    p.rmdir()
        os.close(fd)
    _locks.clear()


def claim_run_folder(out: Path, resume: bool, overwrite: bool, delete: bool = True) -> str | None:
    """Check that `out` (locked) may be written, and clear what a crash left there (STALE). A fresh run
    needs a folder without a checkpoint in it, or --overwrite, which deletes that run's files; the files of
    a run that never saved a checkpoint are not worth protecting: the run starts over in the folder and
    says so. --resume needs a checkpoint. Files are deleted only where `delete` (one rank under FSDP).
    -> a line to print, or None."""
    ckpts = sorted(p.name for p in out.glob("ckpt-*")) + sorted(p.name for p in out.glob(f"{DAMAGED}ckpt-*"))
    held = [m for m in RUN_MARKERS if (out / m).exists()] + ckpts
    clear = [p for pattern in STALE for p in out.glob(pattern)]
    note = None
    if resume:
        if not ckpts:
            raise UserError(f"--resume: {out} has no checkpoint to resume from"
                            + (f" (it has {', '.join(held)}); run without --resume to start it over" if held
                               else " (no run there)"))
    elif not ckpts:
        clear += [out / name for name in held]
        note = f"[run] {out} holds no checkpoint ({', '.join(held)}): starting over in it" if held else None
    elif not overwrite:
        raise UserError(f"{out} already holds a run ({', '.join(held)}). Continue it with --resume, "
                        f"start a new one with --out NEW_FOLDER, or replace it with --overwrite")
    else:
        clear += [out / name for name in held]
    if delete:
        for p in clear:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    return note


def start_metrics_file(path: Path, resumed_step: int) -> str | None:
    """metrics.jsonl for a run starting at `resumed_step`: the lines of steps up to it are kept; those of
    later steps are dropped, since the resumed run computes them again (equal: resume is exact). A torn
    last line (a write cut short by a full disk or a kill) is dropped with them; a malformed line elsewhere
    is an error naming the line. -> a line to print when a torn line was dropped."""
    keep, note = [], None
    if resumed_step and path.exists():
        lines = path.read_bytes().split(b"\n")
        last = max((i for i, raw in enumerate(lines) if raw.strip()), default=-1)
        for i, raw in enumerate(lines):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
                step = row["step"]
            except (ValueError, KeyError, TypeError):
                if i == last:
                    note = f"[resume] {path}: dropped a torn last line (its step is computed again)"
                    continue
                raise UserError(f"{path}:{i + 1}: malformed metrics line; move the file aside to resume") from None
            if step <= resumed_step:
                keep.append(raw.decode())
    write_atomic(path, "".join(line + "\n" for line in keep))
    return note


def append_metrics(path: Path, m: dict):
    """One JSON line per step. A failed write (disk full) raises WriteFailed; the torn line it may leave
    is dropped by start_metrics_file on --resume."""
    try:
        with open(path, "a") as f:
            f.write(json.dumps(m) + "\n")
    except OSError as e:
        raise WriteFailed(f"writing {path} failed ({_why(e)})") from None


def resume_command(out: Path, argv: list[str]) -> str:
    """The command line that continues this run: the same arguments with --resume (never --overwrite)."""
    again = [a for a in argv if a != "--overwrite"] + ([] if "--resume" in argv else ["--resume"])
    again += [] if "--out" in argv else ["--out", str(out)]
    return f"python train.py {shlex.join(again)}"


def interrupted_message(out: Path, argv: list[str], what: str = "interrupted") -> str:
    """What a stop prints: the last complete checkpoint and the command that resumes from it."""
    last = latest_checkpoint(out)
    if last is None:
        return f"{what}; no checkpoint in {out} yet: run the same command again to start over"
    return f"{what}; last complete checkpoint: {last}; resume with: {resume_command(out, argv)}"


class StopSignals:
    """SIGINT (Ctrl-C) and SIGTERM (what Slurm and Kubernetes send before killing a job) as a request to
    stop: the training loop finishes the step it is in, saves a checkpoint there and prints the resume
    command. A second signal stops at once (Stopped: that step is lost; the last checkpoint stays). A
    scheduler's grace period must therefore be longer than one step."""

    def __init__(self):
        self.signum, self._old = None, {}

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def install(self) -> "StopSignals":
        for s in (signal.SIGINT, signal.SIGTERM):
            self._old[s] = signal.signal(s, self._handle)
        return self

    def restore(self):
        for s, handler in self._old.items():
            signal.signal(s, handler)
        self._old = {}

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise Stopped(signum)
        self.signum = signum
        # os.write, not print: the signal may arrive inside a print to stderr (tqdm's), and a buffered
        # stream written again from its handler raises "reentrant call"
        os.write(2, f"\n[{signal.Signals(signum).name}] stopping after this step to save a checkpoint "
                    f"(send it again to stop at once: the step is lost)\n".encode())

    def requested(self, dist: "Dist") -> bool:
        """Whether to stop now; under FSDP every rank stops at the same step (a collective)."""
        return dist.all_max(1.0 if self.signum else 0.0) > 0


def check_resume_config(out: Path, new: dict):
    """A resumed run must be the experiment it continues: every saved setting outside RESUMABLE_CHANGES
    must be equal. Lists every differing key."""
    path = out / "config.json"
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"--resume: cannot read {path} ({e})") from None
    if not isinstance(saved, dict):
        raise UserError(f"--resume: {path} is not a JSON object")
    diff = [f"{k}: {saved.get(k)!r} (saved) vs {new.get(k)!r} (now)" for k in sorted(set(saved) | set(new))
            if k not in RESUMABLE_CHANGES and saved.get(k) != new.get(k)]
    if diff:
        raise UserError(f"--resume: the run in {out} was made with other settings:\n    " + "\n    ".join(diff)
                        + "\nRepeat the saved values (see its config.json), or start a new run with --out")


# -----------------------------------------------------------------------------
# Checkpoints


def full_state_model(model: Transformer, dist: Dist) -> Transformer:
    """An unsharded float32 CPU copy for saving (under FSDP: gathered; rank 0 keeps it). FSDP's parameters
    are DTensors even in a single process (torchrun --nproc_per_node 1), so that is what is checked."""
    if not any(hasattr(p, "full_tensor") for p in model.parameters()):
        return model
    with torch.device("meta"):
        full = Transformer(model.config)
    full = full.to_empty(device="cpu")
    full.tie_weights()
    with torch.no_grad():
        for p_f, p in zip(full.parameters(), model.parameters()):
            p_f.copy_(p.full_tensor().cpu())
    return full


def optimizer_file(dist: Dist) -> str:
    return "optimizer.pt" if dist.world == 1 else f"optimizer.rank{dist.rank}.pt"


def save_checkpoint(out: Path, step: int, model, opt, stream_state: dict, keep: int, dist: Dist,
                    tokenizer_dir: Path | None = None):
    """out/ckpt-STEP: the model in the HF layout (float32 master weights), the optimizer state (one file
    per rank under FSDP), RNG states and the data position. Written to a temporary folder and renamed,
    then the `out/latest` pointer is replaced atomically: a crash at any point leaves the previous
    checkpoint complete and pointed to. A failed write (disk full) removes the temporary folder and raises
    WriteFailed. Every tokenizer and chat-template file of the source model is copied beside the weights,
    so that ckpt-STEP/model loads as it is in transformers, serving engines and eval.py
    (model.copy_tokenizer_files)."""
    final = out / f"ckpt-{step:06d}"
    full = full_state_model(model, dist)  # a collective under FSDP: every rank takes part
    try:
        # every rank writes into one temporary folder; rank 0 renames it, or removes it on a failure, so a
        # half-written checkpoint is never left to be mistaken for one
        with atomic_path(final, tmp=out / f".tmp-ckpt-{step:06d}", owner=dist.main) as tmp:
            if dist.main:
                tmp.mkdir(parents=True)
            dist.barrier()
            torch.save(opt.state_dict(), tmp / optimizer_file(dist))
            dist.barrier()
            if dist.main:
                save_model(full, tmp / "model")
                if tokenizer_dir is not None:
                    copy_tokenizer_files(tokenizer_dir, tmp / "model")
                # plain JSON: loading a checkpoint never unpickles anything but the optimizer's tensors
                rng = {"torch": torch.get_rng_state().tolist(), "python": random.getstate(),
                       "numpy": [v.tolist() if isinstance(v, np.ndarray) else v for v in np.random.get_state()]}
                state = {"step": step, "stream": stream_state, "world": dist.world, "rng": rng}
                (tmp / "trainer_state.json").write_text(json.dumps(state))
        if dist.main:
            write_pointer(out, final)
    except BaseException as e:
        if isinstance(e, (OSError, RuntimeError, SafetensorError)):   # how torch and safetensors report a short write
            raise WriteFailed(f"writing checkpoint {final} failed ({_why(e)})") from None
        raise
    if dist.main:
        for old in checkpoints(out)[keep:]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()


class DamagedCheckpoint(Exception):
    """A checkpoint file that is missing, truncated or unreadable; the message names the file."""


def checkpoints(out: Path) -> list[Path]:
    """The ckpt-STEP folders of a run, newest first."""
    found = [p for p in out.glob("ckpt-*") if re.fullmatch(r"ckpt-\d+", p.name) and p.is_dir()]
    return sorted(found, key=lambda p: int(p.name[5:]), reverse=True)


def read_trainer_state(ckpt: Path) -> dict:
    f = ckpt / "trainer_state.json"
    try:
        state = json.loads(f.read_bytes().decode("utf-8"))
        step = state["step"]
        state["stream"]["pos"], state["world"], state["rng"]["torch"]   # all there
    except FileNotFoundError:
        raise DamagedCheckpoint(f"{f}: missing") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DamagedCheckpoint(f"{f}: unreadable ({type(e).__name__})") from None
    if step != int(ckpt.name[5:]):
        raise DamagedCheckpoint(f"{f}: says step {step!r}, its folder is {ckpt.name}")
    return state


def load_checkpoint(ckpt: Path, opt, dist: Dist) -> tuple[int, dict]:
    """Restore the optimizer and the RNG states (the model was loaded from ckpt/model).
    -> (step, the data stream's state). DamagedCheckpoint names a file that is missing or unreadable;
    a file that holds more than tensors and plain values is refused (UserError): loading it could run code."""
    state = read_trainer_state(ckpt)
    if state["world"] != dist.world:
        raise UserError(f"{ckpt} was written by {state['world']} processes, this run has {dist.world}")
    f = ckpt / optimizer_file(dist)
    try:
        saved = torch.load(f, map_location=dist.device, weights_only=True)
    except pickle.UnpicklingError as e:
        # a pickle that names a function or class (os.system, ...) was made to run code when loaded: refused,
        # never treated as damage; any other unpickling error is a damaged file (torch writes neither)
        named = re.search(r"GLOBAL (\S+)", str(e))
        if named or "Can only create new object" in str(e) or "Can only build" in str(e):
            raise UserError(f"{f}: refused: it holds Python objects, not only tensors and plain values, and "
                            f"loading it would call {named[1] if named else 'code'}; a checkpoint written by "
                            "train.py never does") from None
        raise DamagedCheckpoint(f"{f}: garbage or truncated (not a torch file)") from None
    except FileNotFoundError:
        raise DamagedCheckpoint(f"{f}: missing") from None
    except torch.OutOfMemoryError:
        raise
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise DamagedCheckpoint(f"{f}: truncated or unreadable ({str(e).splitlines()[0][:80]})") from None
    except Exception as e:   # garbage bytes fail anywhere in the unpickler (KeyError, IndexError, struct.error, ...)
        raise DamagedCheckpoint(f"{f}: garbage or truncated ({type(e).__name__}: "
                                f"{(str(e).splitlines() or [''])[0][:80]})") from None
    try:
        opt.load_state_dict(saved)
        rng = state["rng"]
        torch.set_rng_state(torch.tensor(rng["torch"], dtype=torch.uint8))
        random.setstate((rng["python"][0], tuple(rng["python"][1]), rng["python"][2]))
        np_state = rng["numpy"]
        np.random.set_state((np_state[0], np.array(np_state[1], dtype=np.uint32), *np_state[2:]))
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as e:
        raise DamagedCheckpoint(f"{ckpt}: its optimizer or RNG state does not fit this run ({e})") from None
    return state["step"], state["stream"]


def resume_checkpoint(out: Path, build, dist: Dist):
    """Load the newest usable checkpoint of `out`: build(ckpt) -> (model, opt) loads the weights (every
    file checked whole, model.load_model), then load_checkpoint the optimizer, RNG states and data position.
    A damaged checkpoint (a file missing, truncated or unreadable, NaN weights) is named, moved aside to
    damaged-ckpt-STEP and the next older one is used, announced; a refused file (it could run code) or a
    checkpoint of another world size stops the run. -> (ckpt, model, opt, step, stream state)"""
    damaged = []
    for ckpt in checkpoints(out):
        problem = refused = None
        try:
            model, opt = build(ckpt)
            step, stream = load_checkpoint(ckpt, opt, dist)
        except (DamagedCheckpoint, BadModelFile, FileNotFoundError) as e:
            problem = str(e)
        except UserError as e:
            refused = e
        except ValueError as e:   # config.json of ckpt/model unreadable
            problem = str(e)
        status = dist.all_max(2.0 if refused else 1.0 if problem else 0.0)   # every rank decides alike
        if status == 2:
            raise refused or UserError(f"{ckpt}: refused on another rank")
        if status == 0:
            break
        damaged.append((ckpt, problem or "damaged on another rank"))
    else:
        raise UserError(f"--resume: no usable checkpoint in {out}"
                        + "".join(f"; {c.name}: {why}" for c, why in damaged)
                        + ". Start over with --overwrite (it deletes the run's files)")
    if damaged and dist.main:
        for c, why in damaged:
            aside = out / f"{DAMAGED}{c.name}"
            while aside.exists():
                aside = aside.with_name(aside.name + "+")
            os.replace(c, aside)
            print(f"[resume] {c.name} is damaged: {why}; moved aside to {aside}", file=sys.stderr)
        print(f"[resume] resuming from {ckpt}, the newest complete checkpoint", file=sys.stderr)
        write_pointer(out, ckpt)
    dist.barrier()
    return ckpt, model, opt, step, stream


def write_pointer(out: Path, ckpt: Path):
    write_atomic(out / "latest", ckpt.name)


def latest_checkpoint(out: Path) -> Path | None:
    """The last complete checkpoint, for messages: the one `out/latest` names, else (the pointer unreadable
    or naming a folder that is gone) the newest ckpt-STEP folder with its trainer state; None without."""
    try:
        name = (out / "latest").read_bytes().decode("utf-8").strip()
        if re.fullmatch(r"ckpt-\d+", name) and (out / name / "trainer_state.json").is_file():
            return out / name
    except (OSError, ValueError):
        pass
    return next((c for c in checkpoints(out) if (c / "trainer_state.json").is_file()), None)
