"""
explore.py: the sampled responses of an evaluation, token by token, with their top-N candidates, as ONE
self-contained HTML page (inline CSS and JavaScript, nothing loaded from the network).

    python eval.py --model M --data math500 --limit 64 --n 8 --explore --out runs/eval/casp   # sample, then the page
    python eval.py --explore runs/eval/casp                                             # the page again, no model
    python eval.py --explore-compare runs/eval/grpo runs/eval/casp --out runs/cmp        # two runs side by side

What the paper wants seen: at a few "forking" tokens the policy hesitates between candidates; GRPO makes
the top-1 swallow them, CaSP keeps them alive. The sampler records at every generated token the top-N
candidate ids c_1..c_N, their probabilities p(1) >= ... >= p(N) and the entropy H_t of the
temperature-1 next-token distribution; this page shows them where they happen.

The page (OUT/explore.html; OUT/explore_compare.html for two runs)
    per problem   the problem text, the gold answer, pass@1 = c/n and pass@n over ALL n samples, the
                  distinct final answers (verifier-normalized, as eval.py's #ans) with their counts, the
                  mean p(1..N) and H over every token (eval.py's numbers) and at the gated tokens
    per response  the first --explore-samples responses, marked correct / wrong / truncated with the
                  extracted answer, drawn as their text token by token:
                    shade      the token's entropy H_t, or 1 - p(1) (a switch); one scale per page
                    outline    the entropy gate w_t = 1: casp.entropy_gate over the response's own tokens
                               (H_t strictly above its tau-quantile, tau = 0.8), the tokens CaSP acts on.
                               Computed from the sampler's entropies; the loss gates with the training
                               forward's, the same policy up to kernel rounding (and the bf16 sampling copy
                               on a GPU), so a token right at the threshold may be gated differently there
                    popup      on hover, keyboard focus or tap: the sampled token, its probability and
                               rank, H_t, the gate, and the top-N candidates with their probabilities
                               (decoded text, whitespace shown as visible marks)
                    chart      p(1..N) along the response, gated tokens ticked underneath
    filters       correct / wrong / truncated only; problems sorted by pass rate or by distinct answers
    two runs      response j of run A beside response j of run B (the same sample index: with the same
                  seed both drew the same random numbers), the first token where the two differ marked
                  and named
Keyboard: Tab reaches each response, the arrow keys move from token to token, Escape closes the popup.

Stored records: eval.py --explore adds to each problem's line of OUT/samples/<benchmark>.jsonl
    "explore": {"problem": the problem text, "top_n": N, "vocab": {id: the text of that one token},
                "responses": [one per explored response, the first --explore-samples of the n:
                   {"ids", "offsets", "logprobs", "entropy", "topn_ids", "topn_probs"}]}
each array the base64 of its little-endian bytes (`unpack` reads them): ids (L,) int32, offsets (L,) int32:
where each token's text ends in the response's text (characters; the texts of tokens 0..t joined are
text[:offsets[t]], so the page shows exactly the response's text), logprobs (L,) float32: log-prob of the
token under the distribution it was sampled from, entropy (L,) float32, topn_ids (L, N) int32, topn_probs
(L, N) float32: the sampler's own values, bit for bit. About 60 bytes per token; a run without --explore
stores nothing of this.

Page size and speed (headless Chromium on a 2-core CPU shared with other jobs, file opened to load event):
about 65 bytes per shown token, texts included. The CPU demo's 64 problems x 8 responses (12.5k tokens):
0.8 MB, 0.5-0.8 s; 400 responses of 1,000 tokens: 25 MB, 0.7-1.7 s. Up to EAGER_TOKENS tokens every token
is drawn at load, beyond that each problem's when it scrolls near the view. Keep a page to a few hundred
long responses (--limit, --explore-samples): MATH-500 x 8 responses of ~600 tokens would be ~150 MB.
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np

from cli import write_atomic
from passk import pass_at_k

EAGER_TOKENS = 200_000        # up to this many tokens on a page, every token is drawn at load
DTYPES = {"ids": "<i4", "offsets": "<i4", "logprobs": "<f4", "entropy": "<f4", "topn_ids": "<i4",
          "topn_probs": "<f4"}

# -----------------------------------------------------------------------------
# Packed arrays


def pack(x, dtype: str) -> str:
    """An array (numpy, torch on the CPU, or a list) -> base64 of its little-endian bytes as `dtype`."""
    return base64.b64encode(np.ascontiguousarray(np.asarray(x), dtype=dtype).tobytes()).decode("ascii")


def unpack(s: str, dtype: str) -> np.ndarray:
    """Inverse of `pack` (a flat array)."""
    return np.frombuffer(base64.b64decode(s), dtype=dtype)


def unpack_response(resp: dict, top_n: int) -> dict:
    """A stored explore response -> numpy arrays: ids, offsets, logprobs, entropy (L,), topn_ids and
    topn_probs (L, N)."""
    out = {k: unpack(resp[k], DTYPES[k]) for k in DTYPES}
    for k in ("topn_ids", "topn_probs"):
        out[k] = out[k].reshape(-1, top_n)
    return out


# -----------------------------------------------------------------------------
# Token texts


def token_offsets(tokenizer, ids: list[int], text: str) -> list[int]:
    """End offset of each token's text in `text` (= tokenizer.decode(ids)): the texts of tokens 0..t
    joined are text[:offsets[t]], the complete characters of decode(ids[:t+1]). A token that ends inside a
    character (a byte-level BPE piece of a multi-byte character) holds the characters it completes; the
    token that completes a character holds it.

    Incremental detokenization, as streaming decoders do it: decode a window of a few tokens that starts one
    token before the last clean character boundary (that token is context: some decoders treat a window's
    first token differently), and emit what its complete characters add. Should the emitted pieces not join
    to `text` (a decoder that rewrites across token boundaries), every prefix is decoded instead: the same
    definition, but quadratic in L."""
    offsets, parts, start, shown, total = [], [], 0, 0, 0
    for i in range(len(ids)):
        now = tokenizer.decode(ids[start:i + 1])
        complete = now.rstrip("\ufffd")        # U+FFFD at the end: a character still missing bytes
        if len(complete) > shown:
            parts.append(complete[shown:])
            total += len(parts[-1])
            shown = len(complete)
        offsets.append(total)
        if complete == now and i > start:      # a clean boundary: the window restarts at this token
            alone = tokenizer.decode(ids[i:i + 1])
            if "\ufffd" not in alone:
                start, shown = i, len(alone)
    if "".join(parts) == text:
        return offsets
    offsets, done = [], 0
    for i in range(len(ids)):
        head = tokenizer.decode(ids[:i + 1]).rstrip("\ufffd")
        k = 0
        while k < min(len(head), len(text)) and head[k] == text[k]:
            k += 1
        done = max(done, k)
        offsets.append(done)
    if offsets:
        offsets[-1] = len(text)
    return offsets


_BYTE_CHARS = None


def _byte_level_chars() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the printable character that stands for each byte in a token's name."""
    global _BYTE_CHARS
    if _BYTE_CHARS is None:
        bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
        cs, n = bs[:], 0
        for b in range(256):
            if b not in bs:
                bs.append(b)
                cs.append(256 + n)
                n += 1
        _BYTE_CHARS = {chr(c): b for b, c in zip(bs, cs)}
    return _BYTE_CHARS


def token_text(tokenizer, token_id: int) -> str:
    """The text of one token as a candidate is shown: special tokens by name (<|im_end|>), and a
    byte-level piece of a multi-byte character as its bytes (\\xe4\\xbd) instead of U+FFFD."""
    s = tokenizer.decode([token_id], skip_special_tokens=False)
    if "\ufffd" in s:
        name = tokenizer.tok.id_to_token(token_id) if hasattr(tokenizer, "tok") else None
        table = _byte_level_chars()
        if name and all(c in table for c in name):
            return bytes(table[c] for c in name).decode("utf-8", errors="backslashreplace")
    return s


# -----------------------------------------------------------------------------
# What eval.py --explore stores per problem


def explore_record(problem: dict, ro, rows, tokenizer) -> dict:
    """The "explore" field of one problem's samples record: its text, and for the rollout rows `rows`
    (its first responses) every token's id, text offsets, log-prob, entropy and top-N candidates."""
    vocab, responses = {}, []
    for r in rows:
        m = ro.mask[r]                                                              # (L,)
        ids = ro.tokens[r][m]                                                       # (l,)
        topn_ids = ro.topn_ids[r][m]                                                # (l, N)
        id_list = ids.tolist()
        for i in set(id_list) | set(topn_ids.flatten().tolist()):
            if str(i) not in vocab:
                vocab[str(i)] = token_text(tokenizer, i)
        offsets = token_offsets(tokenizer, id_list, ro.texts[r])
        responses.append({"ids": pack(ids, "<i4"), "offsets": pack(offsets, "<i4"),
                          "logprobs": pack(ro.logprobs[r][m], "<f4"), "entropy": pack(ro.entropy[r][m], "<f4"),
                          "topn_ids": pack(topn_ids, "<i4"), "topn_probs": pack(ro.topn_probs[r][m], "<f4")})
    return {"problem": problem.get("problem", ""), "top_n": int(ro.topn_ids.shape[-1]),
            "vocab": dict(sorted(vocab.items(), key=lambda kv: int(kv[0]))), "responses": responses}


# -----------------------------------------------------------------------------
# The page's data: one view per run, problems matched by (benchmark, id)


def entropy_quantile_default() -> float:
    """tau of the gate drawn on the page: the loss's default (casp.LossConfig)."""
    from casp import LossConfig
    return LossConfig().entropy_quantile


def response_gates(entropies: list[np.ndarray], tau: float):
    """casp.entropy_gate over each response's own tokens -> (one bool array per response, the thresholds:
    the tau-quantile of each response's entropies, as torch.nanquantile computes it inside the gate)."""
    import torch

    from casp import entropy_gate

    if not entropies:
        return [], []
    L = max(len(h) for h in entropies)
    h = torch.zeros(len(entropies), max(L, 1), dtype=torch.float32)                  # (m, L)
    mask = torch.zeros(h.shape, dtype=torch.bool)                                   # (m, L)
    for i, e in enumerate(entropies):
        h[i, :len(e)] = torch.from_numpy(np.array(e, dtype=np.float32))
        mask[i, :len(e)] = True
    gate = entropy_gate(h, mask, tau)                                               # (m, L) bool
    thr = torch.nanquantile(h.masked_fill(~mask, float("nan")), tau, dim=1)         # (m,) NaN for empty rows
    return [gate[i, :len(e)].numpy() for i, e in enumerate(entropies)], thr.tolist()


def _utf16_offsets(text: str, offsets: np.ndarray) -> np.ndarray:
    """Character offsets in `text` -> offsets in UTF-16 code units (what JavaScript strings index)."""
    if all(ord(c) < 0x10000 for c in text):
        return offsets
    units = np.cumsum([0] + [2 if ord(c) >= 0x10000 else 1 for c in text])
    return units[offsets]


def answer_groups(rec: dict) -> list[dict]:
    """Distinct final answers of ALL n responses (verifier-normalized, as eval.py's #ans): the first
    spelling seen, how many responses gave it, and whether those responses were rewarded."""
    from verifier import normalize   # never raises (an internal failure is counted there)

    groups: dict = {}
    for a, r in zip(rec["extracted"], rec["rewards"]):
        key = None if a is None else normalize(a)[0]
        g = groups.setdefault(key, {"a": a, "count": 0, "ok": False})
        g["count"] += 1
        g["ok"] |= r > 0.5
    return sorted(groups.values(), key=lambda g: (g["a"] is None, -g["count"]))


def side_view(rec: dict, tau: float, max_responses: int) -> tuple[dict, list]:
    """One run's view of one problem: its summary and its explored responses (token data as the page
    reads it: stored arrays passed through, offsets in UTF-16 units, the gate added). Also returns the
    responses' entropies and 1 - p(1) values, for the page's shading scale."""
    ex = rec.get("explore")
    n, c = rec["n"], rec["n_correct"]
    m = min(n, len(ex["responses"]) if ex else max_responses)
    responses, arrays = [], []
    for j in range(m):
        responses.append({"j": j, "text": rec["responses"][j], "r": rec["rewards"][j], "ans": rec["extracted"][j],
                          "fin": rec["finish"][j], "len": rec["lengths"][j]})
        if ex:
            arrays.append(unpack_response(ex["responses"][j], ex["top_n"]))
    gates, thr = response_gates([a["entropy"] for a in arrays], tau)
    shade = []
    gated = {"n": 0, "p": np.zeros(ex["top_n"] if ex else 0), "H": 0.0}
    for resp, a, g, th in zip(responses, arrays, gates, thr):
        s = ex["responses"][resp["j"]]
        off = _utf16_offsets(resp["text"], a["offsets"])
        resp["tok"] = {"ids": s["ids"], "off": s["offsets"] if off is a["offsets"] else pack(off, "<i4"),
                       "lp": s["logprobs"], "H": s["entropy"], "cid": s["topn_ids"], "cp": s["topn_probs"],
                       "gate": pack(g, "u1"), "thr": None if th != th else th, "N": ex["top_n"]}
        shade.append((a["entropy"], 1.0 - a["topn_probs"][:, 0]))
        gated["n"] += int(g.sum())
        gated["p"] = gated["p"] + a["topn_probs"][g].astype(np.float64).sum(0)
        gated["H"] += float(a["entropy"][g].astype(np.float64).sum())
    view = {"n": n, "c": c, "pass1": pass_at_k(n, c, 1), "passn": pass_at_k(n, c, n), "answers": answer_groups(rec),
            "cand": rec.get("cand"), "recorded": bool(ex), "responses": responses}
    if gated["n"]:
        view["gated"] = {"n_tokens": gated["n"], "topn_probs": (gated["p"] / gated["n"]).tolist(),
                         "entropy": gated["H"] / gated["n"]}
    return view, shade


def first_divergence(a, b) -> int | None:
    """The first token position where two id sequences differ (the shorter one's length when one is a
    prefix of the other); None when they are identical."""
    n = min(len(a), len(b))
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    if diff.size:
        return int(diff[0])
    return None if len(a) == len(b) else n


def _divergence(ra: dict, rb: dict, same_vocab: bool):
    """(position in A, position in B) of the first difference of two paired responses, or None. Token ids
    when both runs decode ids alike; otherwise the first differing character, at the token holding it."""
    if "tok" not in ra or "tok" not in rb:
        return None
    ia, ib = unpack(ra["tok"]["ids"], "<i4"), unpack(rb["tok"]["ids"], "<i4")
    if same_vocab:
        t = first_divergence(ia, ib)
        return None if t is None else [t, t]
    ta, tb = ra["text"], rb["text"]
    if ta == tb:
        return None
    k = next((i for i, (x, y) in enumerate(zip(ta, tb)) if x != y), min(len(ta), len(tb)))
    pos = []
    for r, text in ((ra, ta), (rb, tb)):
        off = unpack(r["tok"]["off"], "<i4")
        k16 = len(text[:k].encode("utf-16-le")) // 2
        pos.append(int(np.searchsorted(off, k16, side="right")))
    return pos


def run_config(path) -> dict:
    """The sampling settings a run was evaluated with (its eval_config.json), {} when there is none."""
    f = run_folder(path) / "eval_config.json"
    if f.is_file():
        try:
            return json.loads(f.read_text())
        except json.JSONDecodeError:
            return {}
    return {}


def page_data(runs: list[dict], tau: float | None = None, max_responses: int = 8) -> dict:
    """The page's data. runs: [{"label", "records", "config"}]: one run, or two compared side by side
    (problems in both, in the first run's order). max_responses: responses shown per problem when a
    record has no token records (sampled without --explore)."""
    tau = entropy_quantile_default() if tau is None else tau
    keyed = [{(r["benchmark"], r["id"]): r for r in run["records"]} for run in runs]
    keys = [k for k in keyed[0] if all(k in other for other in keyed[1:])]
    vocabs = [{} for _ in runs]
    problems, shade, top_n = [], [], 0
    for key in keys:
        recs = [kd[key] for kd in keyed]
        views = []
        for s, rec in enumerate(recs):
            view, sh = side_view(rec, tau, max_responses)
            views.append(view)
            shade += sh
            ex = rec.get("explore") or {}
            vocabs[s].update(ex.get("vocab", {}))
            top_n = max(top_n, ex.get("top_n", 0))
        text = next((r["explore"]["problem"] for r in recs if r.get("explore")), "")
        problems.append({"benchmark": key[0], "id": key[1], "problem": text, "answer": recs[0]["answer"],
                         "sides": views})
    if len(runs) == 2:
        same = all(vocabs[0][i] == vocabs[1][i] for i in vocabs[0].keys() & vocabs[1].keys())
        for p in problems:
            a, b = p["sides"][0]["responses"], p["sides"][1]["responses"]
            p["diverge"] = [_divergence(ra, rb, same) for ra, rb in zip(a, b)]
    h = np.concatenate([x for x, _ in shade]) if shade else np.zeros(1)
    q = np.concatenate([y for _, y in shade]) if shade else np.zeros(1)
    keys_cfg = ("model", "n", "seed", "temperature", "top_p", "top_k", "max_new_tokens", "answer_mode")
    cfgs = [run.get("config") or {} for run in runs]
    differ = [k for k in keys_cfg if k != "model" and len({json.dumps(c.get(k)) for c in cfgs}) > 1]
    return {"title": " vs ".join(run["label"] for run in runs), "tau": tau, "top_n": top_n,
            "runs": [{"label": run["label"], "config": cfg, "vocab": v} for run, cfg, v in zip(runs, cfgs, vocabs)],
            "settings_differ": differ if len(runs) > 1 else [],
            "only_in": [len(kd) - len(keys) for kd in keyed],
            "scale": {"entropy": max(float(np.percentile(h, 99)), 1e-3),
                      "inv_p1": max(float(np.percentile(q, 99)), 1e-3)},
            "tokens": int(h.size) if shade else 0, "eager_tokens": EAGER_TOKENS, "problems": problems}


# -----------------------------------------------------------------------------
# The page: data as JSON in a <script type="application/json">, drawn by the inline script below


def render_page(data: dict) -> str:
    """The whole HTML file. Every text of the data reaches the DOM through textContent (never parsed as
    HTML); every '<' in the JSON is written \\u003c, so that nothing in the data can end its block; a
    Content-Security-Policy forbids every network load."""
    blob = json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")   # no tag, no comment
    return (PAGE.replace("{{TITLE}}", html.escape(f"casp explore: {data['title']}"))
                .replace("{{CSS}}", CSS).replace("{{JS}}", JS).replace("{{DATA}}", blob))


def write_page(path, data: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, render_page(data))


def run_folder(path) -> Path:
    """The run folder of a saved run: the folder itself, or the one holding a samples file."""
    p = Path(path)
    return p if p.is_dir() else (p.parent.parent if p.parent.name == "samples" else p.parent)


def run_label(path) -> str:
    """A run's name on the page: its folder's name (with the benchmark for a single samples file)."""
    p = Path(path)
    return p.name if p.is_dir() else f"{run_folder(p).name}/{p.stem}"


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>{{TITLE}}</title>
<style>{{CSS}}</style>
</head>
<body class="m-e">
<header id="bar"></header>
<div id="legend"></div>
<main id="problems"><noscript>This page draws its responses with JavaScript: enable it to see them.</noscript></main>
<div id="pop" role="tooltip" hidden></div>
<svg id="svg-ns" width="0" height="0" aria-hidden="true" style="position:absolute"></svg>
<script type="application/json" id="explore-data">{{DATA}}</script>
<script>{{JS}}</script>
</body>
</html>
"""

# Colours: the Okabe-Ito palette (distinct under the common colour-vision deficiencies) for categories,
# ColorBrewer's single-hue YlOrBr ramp for the shade (ordered by lightness, so it reads without hue);
# black text stays above 4.5:1 contrast on the darkest shade.
CSS = r"""
:root{--ok:#0072B2;--bad:#D55E00;--trunc:#CC79A7;--focus:#0072B2;--div:#CC79A7;
  --mono:ui-monospace,SFMono-Regular,Menlo,Consolas,"DejaVu Sans Mono",monospace}
*{box-sizing:border-box}
html{scroll-padding-top:90px}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
  color:#111;background:#fff}
#bar{position:sticky;top:0;z-index:5;display:flex;flex-wrap:wrap;gap:6px 16px;align-items:center;
  padding:6px 14px;background:#f3f3f3;border-bottom:1px solid #bbb}
#bar h1{font-size:15px;margin:0 8px 0 0}
#bar label{display:inline-flex;gap:4px;align-items:center}
#bar select{font:inherit}
#count{color:#444}
#legend{display:flex;flex-wrap:wrap;gap:4px 18px;align-items:center;padding:6px 14px;border-bottom:1px solid #ddd;
  font-size:13px;color:#333}
#legend .sw{display:inline-block;width:18px;height:14px;vertical-align:-2px;border:1px solid #ccc}
#legend .ramp{display:inline-flex;gap:0}
#legend .ramp .sw{border-width:1px 0}
.note{margin:6px 14px;padding:4px 8px;border-left:4px solid var(--trunc);background:#faf3f7}
main{padding:4px 14px 40px}
.prob{border:1px solid #c8c8c8;border-radius:6px;margin:12px 0;padding:8px 12px}
.prob h2{font-size:15px;margin:0 0 4px;display:flex;gap:12px;flex-wrap:wrap;align-items:baseline}
.prob h2 .pid{font-family:var(--mono);word-break:break-all}
.ptext{white-space:pre-wrap;word-break:break-word;font-family:var(--mono);background:#f5f5f5;padding:4px 8px;
  margin:4px 0;max-height:16em;overflow:auto}
.gold b{font-family:var(--mono)}
.cols{display:grid;grid-template-columns:repeat(var(--k),minmax(0,1fr));gap:4px 14px}
.cols.one{grid-template-columns:repeat(auto-fill,minmax(min(100%,440px),1fr))}
.sum{font-size:13px;color:#222;padding:4px 0;border-bottom:1px dashed #ddd}
.sum h3{font-size:14px;margin:0}
.chip{display:inline-block;margin:1px 3px 1px 0;padding:0 5px;border:1px solid #999;border-radius:9px;
  font-family:var(--mono);font-size:12px}
.chip.ok{border:2px solid var(--ok)}
.dvl{grid-column:1/-1;font-size:12px;color:#333;margin-top:6px}
.dvl .mk{color:#fff;background:var(--div);padding:0 4px;border-radius:3px}
.resp{border-left:5px solid #999;padding:2px 8px 4px;margin:6px 0;min-width:0}
.resp.ok{border-left-color:var(--ok)}
.resp.bad{border-left-color:var(--bad)}
.resp.tr{border-left-style:dashed}
.resp.dim{opacity:.35}
.rh{font-size:12px;color:#333;display:flex;gap:10px;flex-wrap:wrap}
.rh .v{font-weight:600}
.resp.ok .v{color:var(--ok)}
.resp.bad .v{color:var(--bad)}
.rh .a{font-family:var(--mono)}
.toks{font-family:var(--mono);font-size:13px;white-space:pre-wrap;word-break:break-word;line-height:1.75;margin:2px 0}
.toks.plain{color:#333}
.t{border-radius:2px;outline-offset:-1px}
.t.g{outline:1px solid #111}
.t:hover,.t:focus,.t.cur{outline:2px solid var(--focus);outline-offset:0}
.t:focus-visible{outline:2px solid var(--focus)}
.t.z::before{content:attr(data-l);font-size:72%;color:#555}
.t.nl::after{content:"\21B5";color:#888}
.t.dv{box-shadow:inset 0 -4px 0 var(--div)}
.t.dv::before{content:"\2260";color:#fff;background:var(--div);font-size:75%;padding:0 1px;margin-right:1px;
  border-radius:2px}
.m-e .e1{background:#fff7bc}.m-e .e2{background:#fee391}.m-e .e3{background:#fed06a}.m-e .e4{background:#fec44f}
.m-e .e5{background:#feae3c}.m-e .e6{background:#fe9929}.m-e .e7{background:#ec7014}.m-e .e8{background:#cc4c02}
.m-q .q1{background:#fff7bc}.m-q .q2{background:#fee391}.m-q .q3{background:#fed06a}.m-q .q4{background:#fec44f}
.m-q .q5{background:#feae3c}.m-q .q6{background:#fe9929}.m-q .q7{background:#ec7014}.m-q .q8{background:#cc4c02}
svg.chart{display:block;width:100%;height:38px;background:#fafafa;border:1px solid #e3e3e3;margin-top:2px}
#pop{position:fixed;z-index:10;left:0;top:0;max-width:min(440px,92vw);background:#fff;border:1px solid #333;
  border-radius:6px;box-shadow:0 4px 14px rgba(0,0,0,.25);padding:6px 9px;pointer-events:none;font-size:13px}
#pop .hd{font-weight:600;margin-bottom:2px}
#pop code{font-family:var(--mono);background:#f1f1f1;padding:0 3px;border-radius:3px;white-space:pre}
#pop table{border-collapse:collapse;margin-top:4px;width:100%}
#pop td{padding:1px 4px;vertical-align:middle}
#pop td.p{text-align:right;font-variant-numeric:tabular-nums}
#pop tr.y td{font-weight:600}
#pop .bar{height:9px;background:var(--focus);min-width:1px}
#pop .dim{color:#555}
@media (prefers-reduced-motion:no-preference){#pop{transition:opacity .05s}}
"""

JS = r"""
"use strict";
(function () {
const t0 = performance.now();
const D = JSON.parse(document.getElementById("explore-data").textContent);
const N = D.top_n, K = D.runs.length;
const NS = document.getElementById("svg-ns").namespaceURI;   // the SVG namespace, without writing out its URI
const LINE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#000000", "#F0E442"];
const SHADE = ["#ffffff", "#fff7bc", "#fee391", "#fed06a", "#fec44f", "#feae3c", "#fe9929", "#ec7014", "#cc4c02"];

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = text;
  return e;
}
function bytes(s) {             // base64 -> ArrayBuffer (typed arrays read it little-endian, as it was packed)
  const b = atob(s), u = new Uint8Array(b.length);
  for (let i = 0; i < b.length; i++) u[i] = b.charCodeAt(i);
  return u.buffer;
}
// whitespace made visible: space, newline, tab, carriage return, no-break space
function vis(s) {
  if (s === "") return "\u2205";
  return s.replace(/ /g, "\u2423").replace(/\n/g, "\u21B5").replace(/\t/g, "\u21E5").replace(/\r/g, "\u240D")
          .replace(/\u00a0/g, "\u237D");
}
function f3(p) { return p >= 0.001 || p === 0 ? p.toFixed(3) : p.toExponential(1); }
function bucket(x, max) { return x > 0 ? Math.min(8, Math.round(x / max * 8)) : 0; }
function sampledT1(cfg) {       // sampled from the temperature-1 distribution itself: exp(logprob) = p(y)
  return !cfg || ((cfg.temperature === undefined || cfg.temperature === 1) &&
                  (cfg.top_p === undefined || cfg.top_p >= 1) && !cfg.top_k);
}
function tokens(R) {           // the packed arrays, decoded once
  if (!R._t) {
    const t = R.tok;
    R._t = {ids: new Int32Array(bytes(t.ids)), off: new Int32Array(bytes(t.off)), lp: new Float32Array(bytes(t.lp)),
            H: new Float32Array(bytes(t.H)), cid: new Int32Array(bytes(t.cid)), cp: new Float32Array(bytes(t.cp)),
            gate: new Uint8Array(bytes(t.gate)), N: t.N};
  }
  return R._t;
}
function status(R) { return R.r > 0.5 ? "ok" : "bad"; }

// ---------------------------------------------------------------- toolbar, legend
const bar = document.getElementById("bar"), legend = document.getElementById("legend");
bar.append(el("h1", null, K > 1 ? "compare: " + D.title : "explore: " + D.title));
function select(label, id, options) {
  const l = el("label", null, label + " "), s = el("select");
  s.id = id;
  for (const [v, t] of options) { const o = el("option", null, t); o.value = v; s.append(o); }
  l.append(s); bar.append(l);
  return s;
}
const shadeSel = select("shade", "shade", [["e", "entropy H"], ["q", "1 \u2212 p(1)"]]);
const showSel = select("show", "show", [["all", "all responses"], ["ok", "correct only"], ["bad", "wrong only"],
                                       ["tr", "truncated only"]]);
const sorts = [["file", "file order"], ["pass_asc", "pass rate, lowest first"], ["pass_desc", "pass rate, highest first"],
               ["ans_desc", "distinct answers, most first"]];
if (K > 1) sorts.push(["gap", "pass rate " + D.runs[1].label + " \u2212 " + D.runs[0].label + ", largest first"]);
const sortSel = select("sort", "sort", sorts);
const benches = [...new Set(D.problems.map(P => P.benchmark))];
const benchSel = benches.length > 1 ? select("benchmark", "bench", [["", "all"]].concat(benches.map(b => [b, b]))) : null;
const count = el("span"); count.id = "count"; bar.append(count);

function drawLegend() {
  legend.replaceChildren();
  const mode = shadeSel.value, max = mode === "e" ? D.scale.entropy : D.scale.inv_p1;
  const item = el("span"), ramp = el("span", "ramp");
  for (let b = 0; b <= 8; b++) {
    const s = el("span", "sw");
    s.style.background = SHADE[b];
    s.title = b === 8 ? "\u2265 " + f3(max) : f3(b / 8 * max);
    ramp.append(s);
  }
  item.append((mode === "e" ? "entropy H_t (nats) " : "1 \u2212 p(1) ") + "0 ", ramp,
              " " + f3(max) + " and above (99th percentile on this page)");
  legend.append(item);
  const g = el("span"), gs = el("span", "sw"); gs.style.outline = "1px solid #111"; gs.style.outlineOffset = "-1px";
  g.append(gs, " entropy gate w_t = 1 (H_t above the response's " + D.tau + "-quantile: where CaSP acts)");
  legend.append(g);
  const c = el("span");
  for (let k = 0; k < N; k++) {
    const s = el("span", "sw");
    s.style.background = LINE[k];
    c.append(s, " p(" + (k + 1) + ") ");
  }
  c.append("along the response; ticks: gated tokens");
  legend.append(c);
  legend.append(el("span", null, "\u2713 correct (blue bar) \u00b7 \u2717 wrong (vermillion bar) \u00b7 " +
                                 "\u2702 truncated (dashed bar)"));
  if (K > 1) {
    const d = el("span"), s = el("span", "sw");
    s.style.boxShadow = "inset 0 -4px 0 #CC79A7";
    d.append(s, " \u2260 first token where the paired responses differ");
    legend.append(d);
  }
}
shadeSel.addEventListener("change", () => { document.body.className = "m-" + shadeSel.value; drawLegend(); });
drawLegend();
if (D.settings_differ.length) {
  const diffs = D.settings_differ.map(k => k + ": " + D.runs.map(r => JSON.stringify(r.config[k])).join(" vs "));
  legend.after(el("div", "note", "The runs were sampled with different settings (" + diffs.join("; ") +
                  "): response j of one run is not the same random draw as response j of the other."));
}
if (D.only_in.some(x => x > 0)) {
  legend.after(el("div", "note", "Problems in only one run are left out: " +
                  D.runs.map((r, i) => r.label + " " + D.only_in[i]).join(", ") + "."));
}

// ---------------------------------------------------------------- problems
const main = document.getElementById("problems");
main.replaceChildren();
const owner = new WeakMap();    // .toks element -> {P, s, R}
const problems = D.problems;

function summary(P, s) {
  const V = P.sides[s], box = el("div", "sum");
  if (K > 1) box.append(el("h3", null, D.runs[s].label));
  box.append(el("div", null, "pass@1 " + V.pass1.toFixed(3) + " \u00b7 pass@" + V.n + " " + V.passn.toFixed(3) +
                             "  (" + V.c + " of " + V.n + " correct)"));
  const ans = el("div", null, V.answers.length + " distinct answer" + (V.answers.length === 1 ? "" : "s") + ": ");
  for (const a of V.answers) {
    const chip = el("span", "chip" + (a.ok ? " ok" : ""),
                    (a.a === null ? "(none)" : a.a) + " \u00d7" + a.count + (a.ok ? " \u2713" : ""));
    ans.append(chip);
  }
  box.append(ans);
  const lines = [];
  const probs = c => "p(1.." + c.topn_probs.length + ") " + c.topn_probs.map(f3).join("/") + ", H " + f3(c.entropy);
  if (V.cand && V.cand.n_tokens) lines.push("all " + V.n + " responses (" + V.cand.n_tokens + " tokens): " + probs(V.cand));
  if (V.gated) lines.push("gated tokens of the responses shown (" + V.gated.n_tokens + "): " + probs(V.gated));
  if (!V.recorded) lines.push("no token records (sampled without --explore): text only");
  for (const l of lines) box.append(el("div", null, l));
  return box;
}

function respEl(P, s, R) {
  const d = el("div", "resp " + status(R) + (R.fin === "length" ? " tr" : ""));
  const h = el("div", "rh");
  h.append(el("span", null, "#" + (R.j + 1)), el("span", "v", R.r > 0.5 ? "\u2713 correct" : "\u2717 wrong"));
  const a = el("span", null, "answer: "); a.append(el("span", "a", R.ans === null ? "(none)" : R.ans)); h.append(a);
  h.append(el("span", null, R.len + " tokens"));
  if (R.fin === "length") h.append(el("span", null, "\u2702 truncated"));
  d.append(h);
  const toks = el("div", "toks");
  d.append(toks);
  owner.set(toks, {P, s, R});
  R.el = d; R.toksEl = toks;
  return d;
}

function problemEl(P, idx) {
  const sec = el("section", "prob");
  sec.id = "p" + idx;
  const h = el("h2");
  h.append(el("span", "pid", P.benchmark + " \u00b7 " + P.id));
  sec.append(h);
  if (P.problem) sec.append(el("div", "ptext", P.problem));
  const gold = el("div", "gold", "gold answer: "); gold.append(el("b", null, P.answer)); sec.append(gold);
  const sums = el("div", "cols"); sums.style.setProperty("--k", K);
  for (let s = 0; s < K; s++) sums.append(summary(P, s));
  sec.append(sums);
  const rows = el("div", K === 1 ? "cols one" : "cols"); rows.style.setProperty("--k", K);
  const m = Math.max(...P.sides.map(V => V.responses.length));
  P.rows = [];
  for (let j = 0; j < m; j++) {
    const row = {cells: [], label: null};
    if (K > 1) { row.label = el("div", "dvl"); rows.append(row.label); }
    for (let s = 0; s < K; s++) {
      const R = P.sides[s].responses[j];
      const c = R ? respEl(P, s, R) : el("div", "resp");
      row.cells.push(R || null);
      rows.append(c);
    }
    P.rows.push(row);
  }
  sec.append(rows);
  P.el = sec; P.filled = false;
  return sec;
}

// ---------------------------------------------------------------- tokens and charts
function fillResponse(P, s, R) {
  const toks = R.toksEl;
  if (!R.tok) { toks.textContent = R.text; toks.classList.add("plain"); return; }
  const T = tokens(R), L = T.ids.length, vocab = D.runs[s].vocab;
  const hmax = D.scale.entropy, qmax = D.scale.inv_p1, frag = document.createDocumentFragment();
  let a = 0;
  for (let t = 0; t < L; t++) {
    const sp = document.createElement("span"), b = T.off[t], piece = R.text.slice(a, b);
    a = b;
    let c = "t e" + bucket(T.H[t], hmax) + " q" + bucket(1 - T.cp[t * T.N], qmax);
    if (T.gate[t]) c += " g";
    // trailing newlines go after the token's box (the text stays exact): an outline around a line break
    // would draw a stray bar on the next line; the token shows a visible mark instead
    const body = piece.replace(/\n+$/, "");
    if (piece === "") { c += " z"; sp.dataset.l = vis(vocab[T.ids[t]] || ""); }
    else sp.textContent = body;
    if (body.length < piece.length) c += " nl";
    sp.className = c;
    if (t === 0) sp.tabIndex = 0;     // one tab stop per response (roving tabindex); arrows move within
    frag.append(sp);
    if (body.length < piece.length) frag.append(piece.slice(body.length));
  }
  toks.setAttribute("role", "group");
  toks.setAttribute("aria-label", "response " + (R.j + 1) + ", " + L + " tokens: arrow keys move between tokens");
  toks.append(frag);
  R.el.append(chart(T, L));
}

function chart(T, L) {
  const svg = document.createElementNS(NS, "svg"), W = Math.max(L, 1);
  svg.setAttribute("class", "chart");
  svg.setAttribute("viewBox", "0 0 " + W + " 1.14");
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "p(1.." + T.N + ") along the response");
  for (let k = T.N - 1; k >= 0; k--) {
    const pts = [];
    for (let t = 0; t < L; t++) pts.push((t + 0.5) + "," + (1 - T.cp[t * T.N + k]).toFixed(4));
    const pl = document.createElementNS(NS, "polyline");
    pl.setAttribute("points", pts.join(" "));
    pl.setAttribute("fill", "none");
    pl.setAttribute("stroke", LINE[k % LINE.length]);
    pl.setAttribute("stroke-width", "1.3");
    pl.setAttribute("vector-effect", "non-scaling-stroke");
    svg.append(pl);
  }
  let d = "";
  for (let t = 0; t < L; t++) if (T.gate[t]) d += "M" + (t + 0.5) + " 1.05V1.14";
  if (d) {
    const p = document.createElementNS(NS, "path");
    p.setAttribute("d", d); p.setAttribute("stroke", "#111"); p.setAttribute("stroke-width", "1.5");
    p.setAttribute("vector-effect", "non-scaling-stroke");
    svg.append(p);
  }
  const cur = document.createElementNS(NS, "line");
  cur.setAttribute("y1", "0"); cur.setAttribute("y2", "1.14"); cur.setAttribute("stroke", "#0072B2");
  cur.setAttribute("stroke-width", "2"); cur.setAttribute("vector-effect", "non-scaling-stroke");
  cur.setAttribute("visibility", "hidden"); cur.setAttribute("class", "cursor");
  svg.append(cur);
  return svg;
}

function pieceOf(R, s, t) {
  const T = tokens(R), a = t ? T.off[t - 1] : 0, p = R.text.slice(a, T.off[t]);
  return p === "" ? (D.runs[s].vocab[T.ids[t]] || "") : p;
}
function probOf(T, t) {           // p(y) of the sampled token in the temperature-1 distribution, if known
  for (let k = 0; k < T.N; k++) if (T.cid[t * T.N + k] === T.ids[t]) return [T.cp[t * T.N + k], k + 1];
  return [null, null];
}

function fillProblem(P) {
  if (P.filled) return;
  P.filled = true;
  for (let s = 0; s < K; s++) for (const R of P.sides[s].responses) fillResponse(P, s, R);
  if (K > 1 && P.diverge) {
    P.rows.forEach((row, j) => {
      const dv = P.diverge[j], [A, B] = row.cells;
      if (!A || !B || !A.tok || !B.tok) return;
      if (dv === null) { row.label.textContent = "#" + (j + 1) + ": identical responses"; return; }
      row.label.append(el("span", "mk", "\u2260 #" + (j + 1)), " first difference at token " + (dv[0] + 1) + ": ");
      [A, B].forEach((R, s) => {
        const T = tokens(R), t = dv[s];
        if (t < T.ids.length) {
          R.toksEl.children[t].classList.add("dv");
          const [p] = probOf(T, t);
          row.label.append(D.runs[s].label + " ", el("code", null, vis(pieceOf(R, s, t))),
                           (p === null ? "" : " p=" + f3(p)) + (s === 0 ? " \u00b7 " : ""));
        } else row.label.append(D.runs[s].label + " (ended)" + (s === 0 ? " \u00b7 " : ""));
      });
    });
  }
}

// ---------------------------------------------------------------- popup (hover, focus, tap)
const pop = document.getElementById("pop");
let current = null, pinned = false;

function show(sp) {
  const ctx = owner.get(sp.parentNode);
  if (!ctx) return;
  if (current && current !== sp) unmark(current);
  current = sp;
  const {s, R} = ctx, T = tokens(R), t = indexOf(sp), L = T.ids.length, cfg = D.runs[s].config;
  sp.classList.add("cur");
  sp.setAttribute("aria-describedby", "pop");
  pop.replaceChildren();
  const hd = el("div", "hd", "token " + (t + 1) + " of " + L + (K > 1 ? " \u00b7 " + D.runs[s].label : "") +
                             " \u00b7 gate " + (T.gate[t] ? "on" : "off"));
  pop.append(hd);
  const [p, rank] = probOf(T, t);
  const y = el("div", null, "sampled ");
  y.append(el("code", null, vis(pieceOf(R, s, t))));
  if (p !== null) y.append(" p = " + f3(p) + " (rank " + rank + ")");
  else if (sampledT1(cfg)) y.append(" p = " + f3(Math.exp(T.lp[t])) + " (rank > " + T.N + ")");
  else y.append(" (not in the top " + T.N + ")");
  pop.append(y);
  if (!sampledT1(cfg)) {
    pop.append(el("div", "dim", "sampled with probability " + f3(Math.exp(T.lp[t])) + " (temperature " +
                                cfg.temperature + ", top-p " + cfg.top_p + ", top-k " + cfg.top_k + ")"));
  }
  const thr = R.tok.thr;
  const vsGate = thr === null ? "" : (T.gate[t] ? " > " : " \u2264 ") + f3(thr) + " (the response's " + D.tau + "-quantile)";
  pop.append(el("div", null, "entropy H = " + f3(T.H[t]) + " nats" + vsGate));
  const tb = el("table"), vocab = D.runs[s].vocab;
  let rest = 1;
  for (let k = 0; k < T.N; k++) {
    const id = T.cid[t * T.N + k], q = T.cp[t * T.N + k];
    rest -= q;
    const tr = el("tr", id === T.ids[t] ? "y" : null);
    const txt = el("td"); txt.append(el("code", null, vis(vocab[id] !== undefined ? vocab[id] : "#" + id)));
    const bw = el("td"), b = el("div", "bar");
    bw.style.width = "40%";
    b.style.width = (100 * q).toFixed(1) + "%";
    bw.append(b);
    tr.append(el("td", "dim", "" + (k + 1)), txt, el("td", "p", f3(q)), bw,
              el("td", "dim", id === T.ids[t] ? "\u25C0 sampled" : ""));
    tb.append(tr);
  }
  const tr = el("tr");
  tr.append(el("td"), el("td", "dim", "all others"), el("td", "p", f3(Math.max(rest, 0))), el("td"), el("td"));
  tb.append(tr);
  pop.append(tb);
  pop.hidden = false;
  place(sp);
  const cur = R.el.querySelector("line.cursor");
  if (cur) { cur.setAttribute("x1", t + 0.5); cur.setAttribute("x2", t + 0.5); cur.setAttribute("visibility", "visible"); }
}
function place(sp) {
  const r = sp.getBoundingClientRect(), w = pop.offsetWidth, h = pop.offsetHeight;
  const x = Math.max(4, Math.min(r.left, window.innerWidth - w - 4));
  const below = r.bottom + 6, y = below + h <= window.innerHeight - 4 ? below : Math.max(4, r.top - h - 6);
  pop.style.left = x + "px";
  pop.style.top = y + "px";
}
function unmark(sp) {
  sp.classList.remove("cur");
  sp.removeAttribute("aria-describedby");
  const ctx = owner.get(sp.parentNode);
  const cur = ctx && ctx.R.el.querySelector("line.cursor");
  if (cur) cur.setAttribute("visibility", "hidden");
}
function hide() {
  if (current) unmark(current);
  current = null; pinned = false; pop.hidden = true;
}
function indexOf(sp) { return Array.prototype.indexOf.call(sp.parentNode.children, sp); }   // token t = child t
function tokenOf(e) { const t = e.target; return t && t.closest ? t.closest(".t") : null; }
document.addEventListener("mouseover", e => { const sp = tokenOf(e); if (sp && !pinned) show(sp); });
document.addEventListener("mouseout", e => {
  const sp = tokenOf(e);
  if (sp && sp === current && !pinned && document.activeElement !== sp) hide();
});
document.addEventListener("focusin", e => { const sp = tokenOf(e); if (sp) { pinned = false; show(sp); } });
document.addEventListener("focusout", e => { const sp = tokenOf(e); if (sp && sp === current && !pinned) hide(); });
document.addEventListener("click", e => {     // tap: pin the popup to a token; tap elsewhere closes it
  const sp = tokenOf(e);
  if (sp) { show(sp); pinned = true; } else if (pinned) hide();
});
document.addEventListener("keydown", e => {
  if (e.key === "Escape") { hide(); return; }
  const sp = tokenOf(e);
  if (!sp) return;
  const toks = sp.parentNode, n = toks.children.length, t = indexOf(sp);
  const to = {ArrowRight: t + 1, ArrowLeft: t - 1, Home: 0, End: n - 1}[e.key];
  if (to === undefined || to < 0 || to >= n) return;
  e.preventDefault();
  const next = toks.children[to];
  sp.removeAttribute("tabindex"); next.tabIndex = 0; next.focus();
});
window.addEventListener("scroll", () => { if (current && !pop.hidden) place(current); }, {passive: true});

// ---------------------------------------------------------------- filter and sort
function matches(R, f) { return R && (f === "all" || (f === "tr" ? R.fin === "length" : status(R) === f)); }
function applyFilter() {
  const f = showSel.value, b = benchSel ? benchSel.value : "";
  let np = 0, nr = 0;
  for (const P of problems) {
    let any = false, hits = 0;
    for (const row of P.rows) {
      const hit = row.cells.map(R => matches(R, f)), on = hit.some(Boolean);
      row.cells.forEach((R, s) => {   // one run: hide; two: keep the pair aligned, dim the side that does not match
        if (R) { R.el.hidden = K === 1 && !on; R.el.classList.toggle("dim", K > 1 && on && !hit[s]); }
      });
      if (row.label) row.label.hidden = !on;
      if (on) { any = true; hits += hit.filter(Boolean).length; }
    }
    const shown = (any || f === "all") && (!b || P.benchmark === b);
    P.el.hidden = !shown;
    if (shown) { np++; nr += hits; }
  }
  count.textContent = np + " problem" + (np === 1 ? "" : "s") + ", " + nr + " response" + (nr === 1 ? "" : "s") + " shown";
}
function passRate(P) { return P.sides.reduce((a, V) => a + V.pass1, 0) / K; }
function applySort() {
  const k = sortSel.value, order = problems.map((P, i) => i);
  const key = {
    file: i => i,
    pass_asc: i => passRate(problems[i]),
    pass_desc: i => -passRate(problems[i]),
    ans_desc: i => -Math.max(...problems[i].sides.map(V => V.answers.length)),
    gap: i => -(problems[i].sides[1] ? problems[i].sides[1].pass1 - problems[i].sides[0].pass1 : 0),
  }[k];
  order.sort((a, b) => key(a) - key(b) || a - b);
  const frag = document.createDocumentFragment();
  for (const i of order) frag.append(problems[i].el);
  main.append(frag);
}
showSel.addEventListener("change", applyFilter);
if (benchSel) benchSel.addEventListener("change", applyFilter);
sortSel.addEventListener("change", applySort);

// ---------------------------------------------------------------- draw
const frag = document.createDocumentFragment();
problems.forEach((P, i) => frag.append(problemEl(P, i)));
main.append(frag);
if (D.tokens <= D.eager_tokens || !("IntersectionObserver" in window)) {
  problems.forEach(fillProblem);
} else {   // a large page: each problem's tokens are drawn when it scrolls near the view
  const io = new IntersectionObserver(entries => {
    for (const e of entries) if (e.isIntersecting) { fillProblem(problems[+e.target.id.slice(1)]); io.unobserve(e.target); }
  }, {rootMargin: "1500px 0px"});
  problems.forEach(P => io.observe(P.el));
}
applyFilter();
document.documentElement.dataset.renderMs = (performance.now() - t0).toFixed(1);
})();
"""
