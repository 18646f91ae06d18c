"""The labelled suite tests/verifier_cases.jsonl, the measuring stick of the verifier's answer families.

Each line is {"family", "gold", "response", "label", "mode"}: `label` 1 means the response's answer is
equivalent to the gold, 0 that it is not (most negatives are near misses: a sign flipped, an element
missing, an interval end open instead of closed, another unit, an inequality reversed). `mode` "both"
means the verdict must not depend on the extraction mode (the response boxes its answer), so the case
is checked in strict and in lenient mode; "strict"/"lenient" cases check one mode's extraction.
"""
import collections
import json
from pathlib import Path

import pytest

from verifier import MODES, reward

CASES = [json.loads(line) for line in open(Path(__file__).with_name("verifier_cases.jsonl"), encoding="utf-8")]


def test_suite_shape():
    """At least 300 cases and 100 negatives; every family has positives and negatives; no duplicates;
    every field well-formed."""
    assert len(CASES) >= 300
    assert sum(c["label"] == 0 for c in CASES) >= 100
    by_family = collections.defaultdict(set)
    for c in CASES:
        assert c["label"] in (0, 1) and c["mode"] in ("both",) + MODES and c["gold"] and c["response"], c
        by_family[c["family"]].add(c["label"])
    assert all(labels == {0, 1} for labels in by_family.values()), by_family
    keys = [(c["gold"], c["response"], c["mode"]) for c in CASES]
    assert len(keys) == len(set(keys))


def _agreement():
    """{(family, mode): [agree, total]} and the false positives / negatives, over every (case, mode)."""
    table = collections.defaultdict(lambda: [0, 0])
    fps, fns = [], []
    for c in CASES:
        for mode in (MODES if c["mode"] == "both" else (c["mode"],)):
            got = reward(c["response"], c["gold"], mode=mode)
            ok = (got == 1.0) == (c["label"] == 1)
            for key in ((c["family"], mode), ("overall", mode)):
                table[key][0] += ok
                table[key][1] += 1
            if not ok:
                (fps if c["label"] == 0 else fns).append((c["family"], mode, c["gold"], c["response"][-80:]))
    return table, fps, fns


def test_labelled_suite_agreement():
    """Per family and mode: agreement with the labels is printed; 0 false positives, >= 98% overall
    and >= 95% in every family, in each mode."""
    table, fps, fns = _agreement()
    print()
    for (family, mode), (agree, total) in sorted(table.items()):
        print(f"  {family:18s} {mode:8s} {agree:4d}/{total:4d} = {agree / total:.3f}")
    for fn in fns:
        print("  false negative:", fn)
    assert not fps, fps
    for (family, mode), (agree, total) in table.items():
        assert agree / total >= (0.98 if family == "overall" else 0.95), (family, mode, agree, total)


@pytest.mark.parametrize("family", sorted({c["family"] for c in CASES}))
def test_mode_does_not_matter_for_boxed_answers(family):
    """A boxed answer gets the same reward in strict and lenient mode (cases marked "both")."""
    for c in CASES:
        if c["family"] == family and c["mode"] == "both":
            strict, lenient = (reward(c["response"], c["gold"], mode=mode) for mode in MODES)
            assert strict == lenient, c
