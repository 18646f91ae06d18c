"""model.py against the reference implementation (transformers), plus the KV cache, tokenizer and errors.

Every parity test builds a small random model with transformers, saves it to a temporary folder,
loads it with our `load_model` and compares float32 logits on the same tokens.
"""
import json

import pytest
import torch

from model import (KVCache, MODEL_NAMES, ModelConfig, Transformer, count_params, load_model,
                   load_tokenizer, resolve_model_path, save_model)

transformers = pytest.importorskip("transformers")

TOL = 1e-4


def hf_qwen2(tmp_path, tie=True):
    cfg = transformers.Qwen2Config(
        vocab_size=300, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rope_theta=10000.0,
        rms_norm_eps=1e-6, tie_word_embeddings=tie)
    torch.manual_seed(0)
    m = transformers.Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():  # transformers zero-initialises biases; make them matter
        for n, p in m.named_parameters():
            if n.endswith("bias") or "norm" in n:
                p.add_(torch.randn_like(p) * 0.1)
    m.save_pretrained(tmp_path)
    return m


def hf_llama(tmp_path):
    cfg = transformers.LlamaConfig(
        vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=8, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
        rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
        # head_dim 16, theta 5e5: wavelengths 6.3, 33, 168, ... With original context 64 all three llama3
        # bands are present: kept (< 16), blended (16..64), slowed (> 64)
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
    torch.manual_seed(1)
    m = transformers.LlamaForCausalLM(cfg).eval()
    m.save_pretrained(tmp_path)
    return m


def hf_logits(m, tokens):
    with torch.no_grad():
        return m(tokens).logits


@pytest.fixture(params=["qwen2-tied", "qwen2-untied", "llama3-scaled"])
def pair(request, tmp_path):
    """(reference transformers model, our model loaded from its save_pretrained folder, folder)."""
    if request.param == "llama3-scaled":
        ref = hf_llama(tmp_path)
    else:
        ref = hf_qwen2(tmp_path, tie=request.param == "qwen2-tied")
    ours = load_model(tmp_path, "cpu", torch.float32).eval()
    return ref, ours, tmp_path


def test_logits_match_transformers(pair):
    """Same float32 logits as transformers on random tokens, positions up to 100 (max abs diff < 1e-4)."""
    ref, ours, _ = pair
    tokens = torch.randint(0, ref.config.vocab_size, (3, 100), generator=torch.Generator().manual_seed(0))
    ours_logits = ours(tokens)
    diff = (ours_logits - hf_logits(ref, tokens)).abs().max().item()
    print(f"max |logits - transformers| = {diff:.2e}")
    assert ours_logits.shape == (3, 100, ref.config.vocab_size)
    assert diff < TOL


def test_greedy_tokens_match_transformers(pair):
    """32 greedy steps give the same tokens as transformers' generate (full recompute on our side)."""
    ref, ours, _ = pair
    prompt = torch.randint(0, ref.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expect = ref.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=32,
                              do_sample=False, pad_token_id=0, eos_token_id=None, min_new_tokens=32)
        seq = prompt
        for _ in range(32):
            nxt = ours(seq)[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
    assert torch.equal(seq, expect)


def test_saved_model_loads_in_transformers(pair, tmp_path_factory):
    """save_model output (single file and sharded) loads in transformers with the same logits."""
    ref, ours, _ = pair
    tokens = torch.randint(0, ref.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(2))
    expect = hf_logits(ref, tokens)
    for shard_bytes in (5 * 1024**3, 60_000):
        out = tmp_path_factory.mktemp("saved")
        save_model(ours, out, max_shard_bytes=shard_bytes)
        sharded = (out / "model.safetensors.index.json").exists()
        assert sharded == (shard_bytes == 60_000)
        back = type(ref).from_pretrained(out).eval()
        assert (hf_logits(back, tokens) - expect).abs().max().item() < TOL
        again = load_model(out, "cpu", torch.float32)
        assert (again(tokens) - expect).abs().max().item() < TOL
        if ref.config.tie_word_embeddings:
            assert again.lm_head.weight is again.model.embed_tokens.weight
        assert not list(out.glob("*.tmp"))


def test_kv_cache_matches_full_forward():
    """Right-padded batched prefill of prompts of different lengths, the G-row copy, then one-token decode
    steps give the same logits as one full forward pass of each finished sequence (float32, < 1e-4)."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    model = Transformer(cfg).eval()
    model.init_weights(std=0.2)
    lens = [5, 9, 3]
    P, G, new = len(lens), 2, 6
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 97, (n,), generator=g) for n in lens]
    padded = torch.zeros(P, max(lens), dtype=torch.long)
    for i, p in enumerate(prompts):
        padded[i, :len(p)] = p
    with torch.no_grad():
        pre = KVCache(cfg, P, max(lens))
        logits = model(padded, kv_cache=pre)                        # (P, Tmax, V)
        pre.lengths.copy_(torch.tensor(lens))
        rows = torch.arange(P).repeat_interleave(G)
        cache = KVCache(cfg, P * G, max(lens) + new)
        cache.copy_rows_(pre, rows)
        last = logits[torch.arange(P), torch.tensor(lens) - 1][rows]  # (P*G, V)
        seqs = [prompts[r].tolist() for r in rows.tolist()]
        gen = torch.Generator().manual_seed(4)
        for _ in range(new):
            nxt = torch.multinomial(torch.softmax(last, -1), 1, generator=gen)  # (P*G, 1)
            for s, t in zip(seqs, nxt[:, 0].tolist()):
                s.append(t)
            last = model(nxt, kv_cache=cache)[:, -1]
            # compare each row's step logits with a full recompute of that row
            for b, s in enumerate(seqs):
                full = model(torch.tensor([s]))[0, -1]
                assert (full - last[b]).abs().max().item() < TOL
    assert cache.lengths.tolist() == [len(s) for s in seqs]


def test_gradient_checkpointing_same_gradients():
    """Per-block activation checkpointing changes memory, not gradients."""
    cfg = ModelConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    model = Transformer(cfg)
    model.init_weights()
    tokens = torch.randint(0, 50, (2, 12))
    grads = []
    for ckpt in (False, True):
        model.zero_grad()
        model.gradient_checkpointing = ckpt
        model.train()
        model(tokens).logsumexp(-1).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6)


def test_bfloat16_forward_close_to_float32(tmp_path):
    """bfloat16 weights and compute stay close to float32 and hidden states feed the output layer."""
    hf_qwen2(tmp_path)
    m32 = load_model(tmp_path, "cpu", torch.float32)
    m16 = load_model(tmp_path, "cpu", torch.bfloat16)
    assert m16.model.embed_tokens.weight.dtype == torch.bfloat16
    tokens = torch.randint(0, 300, (2, 30))
    with torch.no_grad():
        a, b = m32(tokens), m16(tokens).float()
        h = m32(tokens, return_hidden=True)
    assert (a - b).abs().max().item() < 0.1
    assert torch.allclose(h @ m32.output_weight.T, a, atol=1e-5)


def test_named_architectures_have_known_sizes():
    """The name table's architecture fields give the published parameter counts."""
    expect = {"qwen-0.5b": 0.494e9, "qwen-1.5b": 1.544e9, "qwen-7b": 7.616e9, "llama-3b": 3.213e9}
    for name, n in expect.items():
        assert abs(MODEL_NAMES[name][1].num_params() - n) / n < 1e-3, name
    with torch.device("meta"):
        m = Transformer(MODEL_NAMES["qwen-1.5b"][1])
    assert count_params(m) == MODEL_NAMES["qwen-1.5b"][1].num_params()


def test_random_init_of_named_model():
    """init='random' builds a named architecture without weights on disk."""
    m = load_model("tiny", init="random")
    assert m(torch.zeros(1, 4, dtype=torch.long)).shape == (1, 4, MODEL_NAMES["tiny"][1].vocab_size)


def test_named_model_found_in_hf_cache(tmp_path, monkeypatch):
    """A name resolves to the newest snapshot in $HF_HUB_CACHE; absent weights print the download command."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HF_HOME", raising=False)
    with pytest.raises(FileNotFoundError, match="huggingface-cli download Qwen/Qwen2.5-Math-1.5B"):
        resolve_model_path("qwen-1.5b")
    snap = tmp_path / "models--Qwen--Qwen2.5-Math-1.5B" / "snapshots" / "abc123"
    hf_qwen2(snap)
    assert resolve_model_path("qwen-1.5b") == snap
    assert load_model("qwen-1.5b")(torch.zeros(1, 2, dtype=torch.long)).shape == (1, 2, 300)


def test_qwen_tokenizer_chatml(qwen_tokenizer_dir):
    """The real Qwen2.5 tokenizer: ChatML ids, stop ids, and its vocabulary size (151,665 < 151,936 rows)."""
    tok = load_tokenizer(qwen_tokenizer_dir)
    assert tok.chat_format == "chatml"
    assert tok.encode("<|im_start|>user\n") == [151644, 872, 198]
    assert {151645, 151643} <= set(tok.stop_ids)
    assert tok.vocab_size == 151665
    ids = tok.encode_chat([{"role": "user", "content": "1+1?"}])
    assert ids[:3] == [151644, 872, 198] and ids[-3:] == [151644, 77091, 198]
    assert tok.decode(ids, skip_special_tokens=False) == tok.render_chat([{"role": "user", "content": "1+1?"}])


def test_stop_ids_from_generation_config(qwen_tokenizer_dir, tmp_path):
    """Stop ids declared by generation_config.json are added to the chat format's end-of-turn ids."""
    (tmp_path / "tokenizer.json").write_bytes((qwen_tokenizer_dir / "tokenizer.json").read_bytes())
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [151643, 151646]}))
    assert load_tokenizer(tmp_path).stop_ids == [151643, 151645, 151646]


# ----------------------------------------------------------------------------- bad input

def test_missing_weights_file(tmp_path):
    hf_qwen2(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_model(tmp_path)


def test_missing_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(tmp_path)


def test_wrong_key_is_named(tmp_path):
    from safetensors.torch import load_file, save_file
    hf_qwen2(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    state["model.layers.0.self_attn.qq_proj.weight"] = state.pop("model.layers.0.self_attn.q_proj.weight")
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(KeyError) as e:
        load_model(tmp_path)
    assert "model.layers.0.self_attn.q_proj.weight" in str(e.value)
    assert "model.layers.0.self_attn.qq_proj.weight" in str(e.value)


def test_unknown_name():
    with pytest.raises(ValueError, match="unknown model name 'qwen-99b'"):
        resolve_model_path("qwen-99b")


def test_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ValueError, match=r"config.json: unsupported architecture 'GPT2LMHeadModel'"):
        load_model(tmp_path)


def test_malformed_config_names_line(tmp_path):
    (tmp_path / "config.json").write_text('{\n "vocab_size": 10,\n oops\n}')
    with pytest.raises(ValueError, match=r"config.json: line 3"):
        load_model(tmp_path)
