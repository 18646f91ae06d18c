"""explore.py and eval.py --explore: the page is well-formed, self-contained HTML whose embedded per-token data
equals the sampler's own records (bit for bit) for a tiny model, whose gate marks equal casp.entropy_gate,
whose token texts join to each response's text; the stored records survive --rescore and a resumed run and
are absent without --explore; two runs are compared at their first differing token; the demo's printed
command reproduces its final evaluation. No test needs a browser: the page is read with html.parser."""
import json
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch

import data
import eval as ev
import explore
import tiny
import train
from casp import entropy_gate
from model import load_model, load_tokenizer
from rollout import rollout

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parent.parent
BASE_KEYS = {"id", "benchmark", "task", "answer", "n", "n_correct", "rewards", "extracted", "responses", "lengths",
             "finish", "cand"}


def eval_args(tiny_dir, out, *extra):
    return ["--model", str(tiny_dir), "--data", "synthetic", "--limit", "4", "--n", "8", "--max-new-tokens", "40",
            "--out", str(out), "--workers", "1", "--no-progress", "--no-plot", "--batch-prompts", "2", *extra]


@pytest.fixture(scope="module")
def explored(tiny_dir, tmp_path_factory):
    """One evaluation with --explore --explore-samples 5 (4 problems x 8 samples, 5 of them explored)."""
    out = tmp_path_factory.mktemp("explored") / "run"
    torch.set_num_threads(1)
    ev.main(eval_args(tiny_dir, out, "--explore", "--explore-samples", "5"))
    return out


# -----------------------------------------------------------------------------
# Reading the page back (standard library only)


VOID = {"meta", "link", "br", "img", "input", "hr", "col", "area", "base", "wbr", "source", "track", "embed"}


class PageParser(HTMLParser):
    """Checks that every element is closed in order, and collects the doctype, tags, attributes, scripts,
    styles and the JSON data block."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.errors, self.tags, self.attrs, self.doctype = [], [], [], [], None
        self.scripts, self.styles, self._text = [], [], None

    def handle_decl(self, decl):
        self.doctype = decl

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)
        if tag in ("script", "style"):
            self._text = (tag, dict(attrs), [])

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()
        if self._text and tag == self._text[0]:
            (self.scripts if tag == "script" else self.styles).append((self._text[1], "".join(self._text[2])))
            self._text = None

    def handle_data(self, d):
        if self._text:
            self._text[2].append(d)


def read_page(path) -> tuple[PageParser, dict]:
    p = PageParser()
    p.feed(Path(path).read_text(encoding="utf-8"))
    p.close()
    assert p.doctype and p.doctype.lower() == "doctype html"
    assert not p.errors and not p.stack, (p.errors, p.stack)
    assert p.tags.count("html") == p.tags.count("head") == p.tags.count("body") == p.tags.count("title") == 1
    blocks = [text for attrs, text in p.scripts if attrs.get("type") == "application/json"]
    assert len(blocks) == 1
    return p, json.loads(blocks[0])


def tok_arrays(resp: dict, top_n: int) -> dict:
    t = resp["tok"]
    out = {"ids": explore.unpack(t["ids"], "<i4"), "off": explore.unpack(t["off"], "<i4"),
           "lp": explore.unpack(t["lp"], "<f4"), "H": explore.unpack(t["H"], "<f4"),
           "cid": explore.unpack(t["cid"], "<i4").reshape(-1, top_n),
           "cp": explore.unpack(t["cp"], "<f4").reshape(-1, top_n), "gate": explore.unpack(t["gate"], "u1")}
    return out


def pieces(text: str, off) -> list[str]:
    """The token texts the page draws: text sliced at the UTF-16 offsets, as JavaScript slices it."""
    u = text.encode("utf-16-le")
    return [u[2 * a:2 * b].decode("utf-16-le") for a, b in zip([0, *off[:-1]], off)]


# -----------------------------------------------------------------------------
# The page against the sampler


def test_page_data_equals_the_samplers_records_and_casps_gate(tiny_dir, explored):
    """Sampling the same 4 problems again (rollout, the same groups of 2 prompts and seed) gives the records the
    page embeds, bit for bit: token ids, log-probs, entropy, top-N ids and probabilities, for the first 5
    responses of each problem (the --explore-samples bound); the page's token texts join to each response's
    text; its gate marks equal casp.entropy_gate applied to the sampler's whole (R, L) batch at tau 0.8, and a
    direct computation (entropy strictly above numpy's linear 0.8-quantile of the response's entropies)."""
    _, page = read_page(explored / "explore.html")
    tok = load_tokenizer(tiny_dir)
    model = load_model(tiny_dir, device="cpu", dtype=torch.float32).eval()
    problems, _ = data.encode_prompts(data.load_dataset("synthetic", limit=4), tok, 1024)
    assert [p["id"] for p in page["problems"]] == [p["id"] for p in problems]
    assert page["tau"] == 0.8 and page["top_n"] == 3
    checked = gated = 0
    for g in range(0, 4, 2):
        ro = rollout(model, tok, problems[g:g + 2], 8, max_new_tokens=40, top_n=3, seed=0, slots=512,
                     answer_mode="lenient", truncated_scores_zero=False, workers=1)
        gate = entropy_gate(ro.entropy, ro.mask, 0.8)                                   # (16, L)
        for q in range(2):
            side = page["problems"][g + q]["sides"][0]
            assert len(side["responses"]) == 5 and side["n"] == 8
            for j, resp in enumerate(side["responses"]):
                r, m = q * 8 + j, ro.mask[q * 8 + j]
                a = tok_arrays(resp, 3)
                assert resp["text"] == ro.texts[r]
                assert np.array_equal(a["ids"], ro.tokens[r][m].numpy())
                assert np.array_equal(a["cid"], ro.topn_ids[r][m].numpy())
                for key, ref in (("lp", ro.logprobs), ("H", ro.entropy), ("cp", ro.topn_probs)):
                    assert np.array_equal(a[key].view(np.uint32), ref[r][m].numpy().view(np.uint32)), key
                assert np.array_equal(a["gate"].astype(bool), gate[r][m].numpy())
                h = ro.entropy[r][m].numpy()                       # the gate by hand: above the 0.8-quantile
                assert np.array_equal(a["gate"].astype(bool), h > np.quantile(h, 0.8))
                assert "".join(pieces(resp["text"], a["off"])) == resp["text"]
                assert [tok.decode([i]) for i in a["ids"]] == pieces(resp["text"], a["off"])   # one character per token
                checked += 1
                gated += int(a["gate"].sum())
    assert checked == 20 and gated > 0


def test_the_page_is_valid_self_contained_html_showing_each_response_once(explored):
    """Well-formed HTML (every element closed in order, one html/head/body/title, a doctype); nothing is
    loaded from anywhere (no src/href/url()/@import, no fetch, no http(s) URL outside the data, a CSP of
    default-src 'none'); each response appears once in the view; the page summary matches the records."""
    p, page = read_page(explored / "explore.html")
    html = (explored / "explore.html").read_text(encoding="utf-8")
    for tag, attrs in p.attrs:
        assert "src" not in attrs and "href" not in attrs, (tag, attrs)
    csp = [a for t, a in p.attrs if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert len(csp) == 1 and csp[0]["content"].startswith("default-src 'none'")
    code = "".join(t for a, t in p.scripts if a.get("type") != "application/json") + "".join(t for _, t in p.styles)
    for bad in ("http:", "https:", "url(", "@import", "fetch(", "XMLHttpRequest", "import(", "WebSocket", "//cdn"):
        assert bad not in code, bad
    outside = html.split('id="explore-data">')[0] + html.split("</script>", 1)[1]
    assert "http:" not in outside and "https:" not in outside
    records = ev.load_run(explored)
    for rec, prob in zip(records, page["problems"]):
        side = prob["sides"][0]
        texts = [r["text"] for r in side["responses"]]
        assert texts == rec["responses"][:5] and [r["j"] for r in side["responses"]] == list(range(5))
        assert prob["problem"] == rec["explore"]["problem"] and prob["answer"] == rec["answer"]
        assert side["pass1"] == pytest.approx(rec["n_correct"] / 8, abs=1e-12)
        assert side["passn"] == (1.0 if rec["n_correct"] else 0.0)
        assert sum(a["count"] for a in side["answers"]) == 8
        distinct = {ev._norm_answer(a) for a in rec["extracted"] if a is not None}
        assert len([a for a in side["answers"] if a["a"] is not None]) == len(distinct)


def test_page_text_is_escaped_and_round_trips(tmp_path):
    """Texts that look like markup (a '</script>' in a response, '<!--' in a problem) stay data: the page keeps
    exactly its two script elements and the JSON gives the texts back unchanged."""
    nasty = "</script><script>alert(1)</script> <!-- & \u2028 \U0001d465"
    rec = {"id": "p<1>", "benchmark": "b", "task": "math", "answer": "</SCRIPT>", "n": 2, "n_correct": 1,
           "rewards": [1.0, 0.0], "extracted": ["1", None], "responses": [nasty, "x"], "lengths": [3, 1],
           "finish": ["stop", "length"], "cand": {"n_tokens": 4, "topn_probs": [0.5, 0.2, 0.1], "entropy": 1.0}}
    page = explore.page_data([{"label": "r<b>", "records": [rec], "config": {}}])
    path = explore.write_page(tmp_path / "x.html", page)
    p, back = read_page(path)
    assert len(p.scripts) == 2 and p.tags.count("script") == 2
    assert back["problems"][0]["sides"][0]["responses"][0]["text"] == nasty and back["problems"][0]["id"] == "p<1>"
    assert back["problems"][0]["sides"][0]["recorded"] is False
    assert [a["a"] for a in back["problems"][0]["sides"][0]["answers"]] == ["1", None]


# -----------------------------------------------------------------------------
# Stored records: bounded, kept by --rescore and resume, absent without --explore


def test_records_survive_rescore_and_resume_and_are_absent_without_explore(tiny_dir, explored, tmp_path, capsys):
    """--rescore leaves the samples file byte-identical; a run cut after 2 problems (and a torn line) resumed
    with --explore ends with the records and the page data of the uninterrupted run; the page from the
    saved samples alone (--explore RUN, no model) is byte-identical to the one the evaluation wrote; a run
    without --explore stores exactly the base fields."""
    f = explored / "samples" / "synthetic.jsonl"
    before = f.read_bytes()
    ev.main(["--rescore", str(explored)])
    assert f.read_bytes() == before
    recs = ev.read_samples(f)
    assert all(set(r) == BASE_KEYS | {"explore"} and len(r["explore"]["responses"]) == 5 for r in recs)

    run = tmp_path / "cut"
    shutil.copytree(explored, run)
    (run / "explore.html").unlink()
    lines = (run / "samples" / "synthetic.jsonl").read_text().splitlines(keepends=True)
    (run / "samples" / "synthetic.jsonl").write_text(lines[0] + lines[1] + lines[2][: len(lines[2]) // 2])
    ev.main(eval_args(tiny_dir, run, "--explore", "--explore-samples", "5"))
    assert ev.read_samples(run / "samples" / "synthetic.jsonl") == recs
    resumed, full = read_page(run / "explore.html")[1], read_page(explored / "explore.html")[1]
    assert resumed["title"] == resumed["runs"][0]["label"] == "cut"         # the folder's name; all else equal
    resumed["title"] = resumed["runs"][0]["label"] = "run"
    assert resumed == full

    again = tmp_path / "again"
    ev.main(["--explore", str(explored), "--out", str(again)])
    assert (again / "explore.html").read_bytes() == (explored / "explore.html").read_bytes()

    plain = tmp_path / "plain"
    ev.main(eval_args(tiny_dir, plain, "--limit", "1"))
    rec = ev.read_samples(plain / "samples" / "synthetic.jsonl")[0]
    assert set(rec) == BASE_KEYS and not (plain / "explore.html").exists()
    assert rec["responses"] == recs[0]["responses"]         # the same samples, without the records
    ev.main(["--explore", str(plain)])                      # a page of text only, no token records
    _, page = read_page(plain / "explore.html")
    side = page["problems"][0]["sides"][0]
    assert side["recorded"] is False and len(side["responses"]) == 8 and "tok" not in side["responses"][0]


def test_cli_mistakes_are_one_error_line(tmp_path):
    """Each misuse of the explore flags ends in one `error:` line with exit status 2."""
    for args, needle in ((["--explore-samples", "3", "--rescore", "x"], "--explore-samples needs"),
                         (["--model", "tiny", "--explore", "somewhere"], "with --model give --explore alone"),
                         (["--explore-compare", "a", "b"], "--explore-compare needs --out"),
                         (["--rescore", "x", "--explore"], "--explore alone needs --model"),
                         (["--explore", str(tmp_path / "missing")], "no such samples file or folder")):
        r = subprocess.run([sys.executable, str(ROOT / "eval.py"), *args], capture_output=True, text=True, cwd=tmp_path)
        assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)


# -----------------------------------------------------------------------------
# Two runs side by side


def test_compare_marks_the_first_differing_token(explored, tmp_path):
    """Run B = run A with one token of one response changed at position 3 (and another response cut after 6
    tokens): the comparison marks exactly those positions, every other pair is identical, each run's
    responses appear once in its view, and a seed that differs is reported."""
    b = tmp_path / "b"
    shutil.copytree(explored, b)
    f = b / "samples" / "synthetic.jsonl"
    recs = ev.read_samples(f)
    r0 = recs[0]["explore"]["responses"][1]
    ids = explore.unpack(r0["ids"], "<i4").copy()
    ids[3] = (ids[3] + 1) % 60
    r0["ids"] = explore.pack(ids, "<i4")
    r1 = recs[1]["explore"]["responses"][2]
    for key, dtype in explore.DTYPES.items():
        x = explore.unpack(r1[key], dtype)
        r1[key] = explore.pack(x[:6 * (3 if key.startswith("topn") else 1)], dtype)
    f.write_text("".join(json.dumps(r) + "\n" for r in recs))
    cfg = json.loads((b / "eval_config.json").read_text())
    (b / "eval_config.json").write_text(json.dumps({**cfg, "seed": 7}))
    ev.main(["--explore-compare", str(explored), str(b), "--out", str(tmp_path / "cmp")])
    _, page = read_page(tmp_path / "cmp" / "explore_compare.html")
    assert [r["label"] for r in page["runs"]] == ["run", "b"] and page["settings_differ"] == ["seed"]
    div = {(i, j): d for i, p in enumerate(page["problems"]) for j, d in enumerate(p["diverge"]) if d is not None}
    assert div == {(0, 1): [3, 3], (1, 2): [6, 6]}
    for prob, rec in zip(page["problems"], ev.load_run(explored)):
        for side in prob["sides"]:
            assert [r["text"] for r in side["responses"]] == rec["responses"][:5]
    assert explore.first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert explore.first_divergence([1, 2], [1, 2, 3]) == 2 and explore.first_divergence([5], [6, 1]) == 0
    assert explore.first_divergence([], []) is None and explore.first_divergence([], [1]) == 0


# -----------------------------------------------------------------------------
# Token texts of a byte-level BPE tokenizer


def test_token_offsets_match_prefix_decoding_for_byte_level_bpe(qwen_tokenizer_dir):
    """For Qwen2.5's byte-level BPE on text with multi-byte and astral characters: the incremental offsets
    equal those of decoding every prefix (the reference path: the complete characters of
    decode(ids[:t+1])), at a few tokens decoded per token; a candidate that is part of a character shows its
    bytes, a special token its name; UTF-16 offsets count an astral character twice, as JavaScript does."""
    tok = load_tokenizer(qwen_tokenizer_dir)
    text = "Let x = 3.\n\n 你好, \U0001d465\u00b2 + \u2211 \U0001F600 caf\u00e9\t\\boxed{\u00bd}"
    ids = tok.encode(text)

    class Counting:                    # counts the tokens decoded: the incremental path decodes a few per token
        decoded = 0

        def decode(self, ids, **kw):
            Counting.decoded += len(ids)
            return tok.decode(ids, **kw)

    off = explore.token_offsets(Counting(), ids, tok.decode(ids))
    ref = [len(tok.decode(ids[:t + 1]).rstrip("\ufffd")) for t in range(len(ids))]
    assert off == ref and off[-1] == len(text) and tok.decode(ids) == text
    assert Counting.decoded < 5 * len(ids) < len(ids) * (len(ids) + 1) // 2     # not the quadratic fallback
    partial = [i for i in ids if "\ufffd" in tok.decode([i])]
    assert partial and all("\\x" in explore.token_text(tok, i) for i in partial)
    assert explore.token_text(tok, tok.stop_ids[0]) in ("<|im_end|>", "<|endoftext|>")
    u16 = explore._utf16_offsets(text, np.array(off))
    assert list(u16) == [len(text[:k].encode("utf-16-le")) // 2 for k in off]


# -----------------------------------------------------------------------------
# The demo's printed command


def test_demo_explore_command_redraws_the_final_evaluation(tiny_dir, tmp_path):
    """The command train.py's demo prints (here with 4 held-out problems, 40 tokens, and the test's tiny
    model in place of the trained checkpoint) samples exactly the responses of the demo's final evaluation
    (train.heldout_pass's rollout: same problems, seed 10**6, rows per call) and writes the explore page."""
    args = train.get_args(["--eval-prompts", "4", "--max-response-len", "40", "--device", "cpu"])
    out = tmp_path / "runs" / "tiny-casp"
    cmd = train.eval_command(vars(args), out / "ckpt-000030", explore=out.parent / "eval" / out.name).split()
    assert cmd[:2] == ["python", "eval.py"]
    assert cmd[cmd.index("--out") + 1] == str(tmp_path / "runs" / "eval" / "tiny-casp")
    assert cmd[cmd.index("--model") + 1] == str(out / "ckpt-000030" / "model") and "--explore" in cmd
    argv = cmd[2:]
    argv[argv.index("--model") + 1] = str(tiny_dir)
    ev.main(argv + ["--no-progress", "--workers", "1"])
    tok = load_tokenizer(tiny_dir)
    model = load_model(tiny_dir, device="cpu", dtype=torch.float32).eval()
    held, _ = data.encode_prompts(tiny.synthetic_problems(4, seed=args.seed, split="heldout"), tok, args.max_prompt_len)
    ro = rollout(model, tok, held, 8, max_new_tokens=args.max_response_len, temperature=args.temperature,
                 top_p=args.top_p, top_n=args.top_n, seed=10**6, slots=args.rollout_batch, answer_mode=args.answer_mode)
    evald = tmp_path / "runs" / "eval" / "tiny-casp"
    saved = [t for r in ev.load_run(evald) for t in r["responses"]]
    assert saved == ro.texts and (evald / "explore.html").is_file()


def test_the_inline_script_parses(tmp_path):
    """The page's script is valid JavaScript (node --check; skipped where node is not installed): the
    html.parser tests above cannot see a syntax error that would leave the page blank."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("needs Node.js: install it so that `node` is on PATH")
    js = tmp_path / "page.js"
    js.write_text(explore.JS)
    r = subprocess.run([node, "--check", str(js)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
