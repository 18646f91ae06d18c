"""model.py against the reference implementation (transformers), plus the KV cache, tokenizer, chat templates
(rendered as transformers' apply_chat_template), checkpoint tokenizer files and errors.

Every parity test builds a small random model with transformers, saves it to a temporary folder,
loads it with our `load_model` and compares float32 logits on the same tokens.
"""
import json

import pytest
import torch

from model import (BadModelFile, KVCache, MODEL_NAMES, ModelConfig, Transformer, copy_tokenizer_files,
                   load_model, load_tokenizer, resolve_model_path, save_model)

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


def test_prefill_attends_causally_without_a_mask(monkeypatch):
    """A forward of several tokens into an empty cache (the sampler's right-padded prefill) calls SDPA with
    is_causal=True, no mask and only the new tokens' keys: the form SDPA runs in its fused CUDA kernels
    (a boolean mask with enable_gqa leaves it only the math kernel, which materialises (B, H, T, T) float32
    scores). A multi-token forward into a cache that already holds tokens keeps the masked kernel over the
    whole buffer. Both equal one full forward of each sequence (float32, < 1e-4)."""
    import model as model_module
    cfg = ModelConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=True)
    m = Transformer(cfg).eval()
    m.init_weights(std=0.2, generator=torch.Generator().manual_seed(0))
    calls, sdpa = [], model_module.F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, is_causal=False, **kw):
        calls.append((q.shape[2], k.shape[2], attn_mask is None, is_causal))
        return sdpa(q, k, v, attn_mask=attn_mask, is_causal=is_causal, **kw)

    monkeypatch.setattr(model_module.F, "scaled_dot_product_attention", spy)
    lens = [5, 9, 3]
    seqs = torch.randint(0, 97, (3, 13), generator=torch.Generator().manual_seed(1))
    padded = seqs[:, :9].clone()
    with torch.no_grad():
        cache = KVCache(cfg, 3, 16)
        first = m(padded, kv_cache=cache)                                         # (3, 9, V) the prefill
        assert calls == [(9, 9, True, True)] * cfg.num_hidden_layers and not cache.empty
        calls.clear()
        cache.lengths.copy_(torch.tensor(lens))
        nxt = torch.stack([seqs[b, n:n + 4] for b, n in enumerate(lens)])         # (3, 4) four more each
        more = m(nxt, kv_cache=cache)                                             # (3, 4, V)
        assert calls == [(4, 16, False, False)] * cfg.num_hidden_layers
        for b, n in enumerate(lens):
            full = m(seqs[b:b + 1, :n + 4])[0]                                    # (n + 4, V)
            assert (full[:n] - first[b, :n]).abs().max() < TOL
            assert (full[n:] - more[b]).abs().max() < TOL


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
    distinct = {id(p): p for p in m.parameters()}.values()   # a tied matrix counts once
    assert sum(p.numel() for p in distinct) == MODEL_NAMES["qwen-1.5b"][1].num_params()


def test_random_init_of_named_model():
    """init='random' builds a named architecture without weights on disk."""
    m = load_model("tiny", init="random")
    assert m(torch.zeros(1, 4, dtype=torch.long)).shape == (1, 4, MODEL_NAMES["tiny"][1].vocab_size)


def test_named_model_found_in_hf_cache(tmp_path, monkeypatch):
    """A name resolves to the newest snapshot in $HF_HUB_CACHE; absent weights print the download command."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HF_HOME", raising=False)
    with pytest.raises(FileNotFoundError, match=r"hf download Qwen/Qwen2.5-Math-1.5B\n") as e:
        resolve_model_path("qwen-1.5b")
    assert "huggingface-cli download" in str(e.value)  # the older CLI's name, for old installs
    snap = tmp_path / "models--Qwen--Qwen2.5-Math-1.5B" / "snapshots" / "abc123"
    hf_qwen2(snap)
    assert resolve_model_path("qwen-1.5b") == snap
    assert load_model("qwen-1.5b")(torch.zeros(1, 2, dtype=torch.long)).shape == (1, 2, 300)


def test_qwen_tokenizer_chatml(qwen_tokenizer_dir):
    """The real Qwen2.5 tokenizer: ChatML ids, stop ids, and its vocabulary size (151,665 < 151,936 rows)."""
    tok = load_tokenizer(qwen_tokenizer_dir)
    assert tok.chat_format == "chatml" and tok.chat_source == "builtin:chatml"   # a bare tokenizer.json
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


# ----------------------------------------------------------------------------- chat templates
# The prompt is the checkpoint's own template, rendered as transformers' apply_chat_template renders it.
# Each test writes a model folder (tokenizer.json + template + tokenizer_config.json), then compares our
# text and token ids with transformers' AutoTokenizer on the same folder.

# Qwen2.5-Instruct's template (tokenizer_config.json of Qwen/Qwen2.5-*-Instruct): a default system message
QWEN25_INSTRUCT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
# Qwen2.5-Math's template is the same with another default system message
QWEN25_MATH_SYSTEM = "Please reason step by step, and put your final answer within \\\\boxed{}."
QWEN25_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'DEFAULT_SYSTEM' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nDEFAULT_SYSTEM<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

# SmolLM2-Instruct's template (HuggingFaceTB/SmolLM2-135M-Instruct): a default system message unless the
# conversation starts with one
SMOLLM2_TEMPLATE = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                    "<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
                    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                    "{% endif %}")

# A Llama-3.1-style template that uses every tool transformers gives a template: bos_token from
# tokenizer_config.json, strftime_now, raise_exception, namespace, loop controls, tojson (no HTML escaping,
# non-ASCII kept), a {% generation %} block (the assistant-mask marker), and block tags without `-` whose
# output depends on trim_blocks / lstrip_blocks
LLAMA3_TEMPLATE = r"""{{- bos_token }}
{%- if not date_string is defined %}
    {%- set date_string = strftime_now("%d %b %Y") %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] | trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{{- "Cutting Knowledge Date: December 2023\nToday Date: " + date_string + "\n\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- set ns = namespace(turns=0) %}
{%- for message in messages %}
    {%- if message.role not in ['user', 'assistant'] %}
        {{- raise_exception("Only user and assistant roles are supported, got " + message.role) }}
    {%- endif %}
    {%- if message.role == 'user' and message.content == 'STOP' %}{% break %}{% endif %}
    {%- set ns.turns = ns.turns + 1 %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}
    {%- if message.role == 'assistant' %}
        {%- generation %}
        {{- message['content'] | trim + '<|eot_id|>' }}
        {%- endgeneration %}
    {%- else %}
        {{- message['content'] | trim }}
        {%- if message.meta is defined %}{{- ' ' + message.meta | tojson }}{%- endif %}
        {{- '<|eot_id|>' }}
    {%- endif %}
{%- endfor %}
{% if add_generation_prompt %}
  {% if true %}
{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
  {% endif %}
{% endif %}
"""

CHATML_SPECIALS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


def char_tokenizer_folder(folder, specials, config: dict, template: str | None = None, where="config"):
    """A model folder with a character-level tokenizer.json over printable ASCII plus `specials` (no download
    needed), tokenizer_config.json = `config`, and `template` in chat_template.jinja or in the config."""
    import string

    from tokenizers import Regex, Tokenizer as HFTokenizer, decoders, models, pre_tokenizers
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {c: i for i, c in enumerate(dict.fromkeys(string.printable))}
    vocab["<unk>"] = len(vocab)
    tok = HFTokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(specials)
    tok.save(str(folder / "tokenizer.json"))
    write_template(folder, config, template, where)
    return folder


def write_template(folder, config: dict, template: str | None, where: str):
    config = dict(config)
    if template is not None and where == "config":
        config["chat_template"] = template
    elif template is not None:
        (folder / "chat_template.jinja").write_text(template)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


def assert_same_as_transformers(folder, conversations, **kwargs):
    """Our render_chat / encode_chat give transformers' apply_chat_template text and ids, with and without
    the generation prompt. Returns our Tokenizer."""
    ref = transformers.AutoTokenizer.from_pretrained(folder)
    ours = load_tokenizer(folder)
    for messages in conversations:
        for gen in (True, False):
            text = ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen, **kwargs)
            ids = ref.apply_chat_template(messages, tokenize=True, add_generation_prompt=gen, **kwargs)
            ids = ids if isinstance(ids, list) else ids["input_ids"]
            assert ours.render_chat(messages, add_generation_prompt=gen, **kwargs) == text, messages
            assert ours.encode_chat(messages, add_generation_prompt=gen, **kwargs) == ids, messages
    return ours


MATH_TURN = [{"role": "user", "content": "If $x^2 = 4$ and $x > 0$, what is $x$?\nPlease reason step by step, "
                                         "and put your final answer within \\boxed{}."}]
CONVERSATIONS = [
    MATH_TURN,
    [{"role": "system", "content": "You are a careful grader."}] + MATH_TURN,
    MATH_TURN + [{"role": "assistant", "content": "x = 2, so \\boxed{2}."}, {"role": "user", "content": "  And 9?  "}],
]


@pytest.mark.parametrize("where", ["config", "jinja"])
@pytest.mark.parametrize("system", [QWEN25_INSTRUCT_SYSTEM, QWEN25_MATH_SYSTEM], ids=["instruct", "math"])
def test_qwen_template_matches_transformers(qwen_tokenizer_dir, tmp_path, system, where):
    """The real Qwen2.5 tokenizer with Qwen2.5-Instruct's / Qwen2.5-Math's template (in tokenizer_config.json
    or chat_template.jinja): same prompt text and ids as transformers, default system message included."""
    (tmp_path / "tokenizer.json").write_bytes((qwen_tokenizer_dir / "tokenizer.json").read_bytes())
    config = {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": None,
              "tokenizer_class": "Qwen2Tokenizer", "model_max_length": 131072}
    write_template(tmp_path, config, QWEN25_TEMPLATE.replace("DEFAULT_SYSTEM", system), where)
    ours = assert_same_as_transformers(tmp_path, CONVERSATIONS)
    expect_source = "template:tokenizer_config.json" if where == "config" else "template:chat_template.jinja"
    assert ours.chat_source == expect_source
    text = ours.render_chat(MATH_TURN)
    default = system.replace("\\\\", "\\")
    assert text.startswith(f"<|im_start|>system\n{default}<|im_end|>\n<|im_start|>user\n")
    assert ours.stop_ids == [151643, 151645]
    # data.py's prompts go through the template: the default system message is in the training prompt
    import data
    ids = data.build_prompt({"problem": "What is 1+1?", "answer": "2"}, ours)
    assert ours.decode(ids, skip_special_tokens=False).startswith(f"<|im_start|>system\n{default}<|im_end|>")


def test_smollm2_template_matches_transformers(tmp_path):
    """A SmolLM2-like folder (its template and special tokens): the default system message is inserted unless
    the conversation has one, and text and ids equal transformers'; data.build_prompt uses it."""
    import data
    config = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>",
              "unk_token": "<|endoftext|>", "tokenizer_class": "PreTrainedTokenizerFast"}
    folder = char_tokenizer_folder(tmp_path, CHATML_SPECIALS, config, SMOLLM2_TEMPLATE)
    ours = assert_same_as_transformers(folder, CONVERSATIONS)
    assert ours.chat_source == "template:tokenizer_config.json" and ours.chat_format == "chatml"
    system = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    assert ours.render_chat(MATH_TURN) == system + ours.tok.decode(
        load_tokenizer(folder, chat_template="builtin").encode_chat(MATH_TURN), skip_special_tokens=False)
    assert ours.render_chat(CONVERSATIONS[1]).startswith("<|im_start|>system\nYou are a careful grader.<|im_end|>")
    prob = {"problem": "What is 2+3?", "answer": "5", "task": "math"}
    user = [{"role": "user", "content": f"What is 2+3?\n{data.MATH_INSTRUCTION}"}]
    expect = transformers.AutoTokenizer.from_pretrained(folder).apply_chat_template(user, add_generation_prompt=True)
    assert data.build_prompt(prob, ours) == (expect if isinstance(expect, list) else expect["input_ids"])


def test_llama3_style_template_matches_transformers(tmp_path):
    """A template using bos_token, strftime_now, namespace, loop controls, tojson and a {% generation %} block
    renders as in transformers (it fails only if the date changes between the two renders, microseconds
    apart); raise_exception surfaces as a ValueError naming the template."""
    config = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "tokenizer_class": "PreTrainedTokenizerFast"}
    folder = char_tokenizer_folder(tmp_path, LLAMA3_SPECIALS, config, LLAMA3_TEMPLATE, where="jinja")
    meta = [{"role": "user", "content": "hi", "meta": {"note": "caf\u00e9 <b>&", "n": 1}}]
    stop = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
            {"role": "user", "content": "STOP"}, {"role": "assistant", "content": "never shown"}]
    unset = [{"role": "user", "content": "hi", "meta": None}]     # None-valued keys are dropped, as transformers
    ours = assert_same_as_transformers(folder, CONVERSATIONS + [meta, stop, unset])
    assert ours.chat_source == "template:chat_template.jinja" and ours.chat_format == "llama3"
    assert '{"note": "caf\u00e9 <b>&", "n": 1}' in ours.render_chat(meta)
    assert ours.render_chat(MATH_TURN).startswith("<|begin_of_text|><|start_header_id|>system")
    assert ours.stop_ids == sorted(ours.token_to_id(t) for t in ["<|eot_id|>", "<|end_of_text|>"])
    assert ours.render_chat(MATH_TURN, date_string="1 Jan 2024").count("Today Date: 1 Jan 2024") == 1
    with pytest.raises(ValueError, match="chat_template.jinja.*Only user and assistant roles"):
        ours.render_chat([{"role": "tool", "content": "x"}])


def test_template_sources_and_fallback(tmp_path):
    """Which template is used: chat_template.jinja over tokenizer_config.json's field (as transformers), the
    entry named "default" of a list of named templates, chat_template.json last; no template -> built-in
    ChatML, also forced by chat_template="builtin"."""
    config = {"eos_token": "<|im_end|>", "tokenizer_class": "PreTrainedTokenizerFast"}
    folder = char_tokenizer_folder(tmp_path, CHATML_SPECIALS, config)
    assert load_tokenizer(folder).chat_source == "builtin:chatml"
    assert load_tokenizer(folder).render_chat(MATH_TURN).startswith("<|im_start|>user\n")
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": "json:{{ messages[0].content }}"}))
    assert load_tokenizer(folder).chat_source == "template:chat_template.json"
    assert load_tokenizer(folder).render_chat([{"role": "user", "content": "q"}]) == "json:q"
    named = [{"name": "tool_use", "template": "tool"},
             {"name": "default", "template": "config:{{ messages[0].content }}"}]
    write_template(folder, config, named, "config")
    assert load_tokenizer(folder).chat_source == "template:tokenizer_config.json"
    assert_same_as_transformers(folder, [[{"role": "user", "content": "q"}]])
    write_template(folder, config, SMOLLM2_TEMPLATE, "config")
    (folder / "chat_template.jinja").write_text("jinja:{{ messages[0].content }}")
    assert load_tokenizer(folder).chat_source == "template:chat_template.jinja"
    assert_same_as_transformers(folder, [[{"role": "user", "content": "q"}]])
    forced = load_tokenizer(folder, chat_template="builtin")
    assert forced.chat_source == "builtin:chatml" and forced.render_chat([{"role": "user", "content": "q"}]) == \
        "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n"


def test_tiny_tokenizer_keeps_builtin_chatml(tmp_path):
    """The tiny model's character tokenizer has no template: built-in ChatML, no system message."""
    import tiny
    tok = tiny.make_tiny_tokenizer(tmp_path)
    assert tok.chat_source == "builtin:chatml" and tok.chat_template is None
    expect = "<|im_start|>user\n1+2<|im_end|>\n<|im_start|>assistant\n"
    assert tok.render_chat([{"role": "user", "content": "1+2"}]) == expect


def test_checkpoint_keeps_chat_template(tmp_path):
    """save_model(..., tokenizer_dir=src) copies every tokenizer/template file of a source folder (and nothing
    else), atomically: transformers' AutoTokenizer on the checkpoint applies the template and agrees with
    our load_tokenizer on the checkpoint; a second save over it leaves no temporary file."""
    src = tmp_path / "src"
    config = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "tokenizer_class": "PreTrainedTokenizerFast"}
    char_tokenizer_folder(src, CHATML_SPECIALS, config, SMOLLM2_TEMPLATE, where="jinja")
    (src / "generation_config.json").write_text(json.dumps({"eos_token_id": 100}))
    (src / "special_tokens_map.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
    (src / "additional_chat_templates").mkdir()
    (src / "additional_chat_templates" / "plain.jinja").write_text("{{ messages[0].content }}")
    for junk in ("README.md", "model.safetensors", "pytorch_model.bin", "config.json"):
        (src / junk).write_text('{"not": "a tokenizer file"}')
    model = hf_qwen2(tmp_path / "hf")
    ours = load_model(tmp_path / "hf")
    ckpt = tmp_path / "ckpt-000001" / "model"
    for _ in range(2):
        save_model(ours, ckpt, tokenizer_dir=load_tokenizer(src).folder)
    copied = sorted(str(p.relative_to(ckpt)) for p in ckpt.rglob("*") if p.is_file())
    assert copied == ["additional_chat_templates/plain.jinja", "chat_template.jinja", "config.json",
                      "generation_config.json", "model.safetensors", "special_tokens_map.json", "tokenizer.json",
                      "tokenizer_config.json"]
    assert "not" not in json.loads((ckpt / "config.json").read_text())      # save_model's own config.json
    ref = transformers.AutoTokenizer.from_pretrained(ckpt)
    text = ref.apply_chat_template(MATH_TURN, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert ref.apply_chat_template(MATH_TURN, tokenize=False, chat_template="plain") == MATH_TURN[0]["content"]
    assert load_tokenizer(ckpt).render_chat(MATH_TURN) == text
    assert load_tokenizer(ckpt).chat_source == "template:chat_template.jinja"
    tokens = torch.randint(0, 300, (1, 9))
    back = transformers.AutoModelForCausalLM.from_pretrained(ckpt)
    assert (hf_logits(back, tokens) - hf_logits(model, tokens)).abs().max() < TOL
    # the copy on its own: names returned, onto itself a no-op, a missing folder named
    names = copy_tokenizer_files(src / "tokenizer.json", tmp_path / "other")
    assert names[:2] == ["tokenizer.json", "tokenizer_config.json"] and "README.md" not in names
    assert copy_tokenizer_files(ckpt, ckpt) == []
    with pytest.raises(FileNotFoundError, match="nowhere"):
        copy_tokenizer_files(tmp_path / "nowhere", tmp_path / "x")


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
    with pytest.raises(BadModelFile) as e:
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
