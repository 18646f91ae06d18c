"""Math verification throughput (responses/s on one core) on the real reference solutions. Not a test.

    python bench/bench_verifier.py [--data DIR] [--n 3000] [--mode strict lenient]

--data is the data folder (default: $CASP_DATA, else ~/.cache/casp/data, as train.py and eval.py read it);
`python data.py prepare math500 minerva_math aime2024 gsm8k_test math_train` writes the five sets it reads.

Each row times `reward(solution, gold, mode=...)` serially in this process (one core) for one data set,
with every memo cache of the verifier cleared first so repeated golds do not flatter the numbers, and
reports the best of --repeats runs (other load on the machine only ever slows a run down); a
mismatched-pairs row times a solution against another problem's gold, the common case during RL. In
strict mode GSM8K's reference solutions (which end in "#### 18", not a box) score 0 but are still timed.
The last row is the slowest single call over a few 100k-character adversarial responses.
"""
import argparse
import sys
import json
import random
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project's modules
import data
import verifier

SETS = ("math500", "minerva_math", "aime2024", "gsm8k_test", "math_train")


def load(data: Path, name: str, n: int) -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in open(data / f"{name}.jsonl", encoding="utf-8")]
    pairs = [(r["solution"], r["answer"]) for r in rows if r.get("solution")]
    return pairs[:n]


def bench(pairs, mode: str, repeats: int) -> tuple[float, float]:
    best = float("inf")
    for _ in range(repeats):
        verifier._cache_clear()
        t = time.perf_counter()
        hits = sum(verifier.reward(resp, gold, mode=mode) for resp, gold in pairs)
        best = min(best, time.perf_counter() - t)
    return len(pairs) / best, hits / len(pairs)


ADVERSARIAL = ["$1 " * 33_000, "The answer is " + "a b " * 25_000, "\\boxed{1}, " * 9000, "1 2 3 " * 16_000,
               "{" * 50_000 + "}" * 50_000, "\\boxed{" + "(" * 400 + "1" + ")" * 400 + "}"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=None,
                    help="data folder (default: $CASP_DATA, else ~/.cache/casp/data)")
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--mode", nargs="+", default=list(verifier.MODES), choices=verifier.MODES)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    args.data = args.data or data.default_data_dir()
    missing = [name for name in SETS if not (args.data / f"{name}.jsonl").is_file()]
    if missing:
        ap.error(f"{args.data} lacks {', '.join(missing)}: python data.py prepare {' '.join(missing)}")
    print(f"| {'set':<22} | {'mode':<7} | {'responses':>9} | {'responses/s':>11} | {'reward=1':>8} |")
    print(f"|{'-' * 24}|{'-' * 9}|{'-' * 11}|{'-' * 13}|{'-' * 10}|")
    everything = []
    sets = [(name, load(args.data, name, args.n)) for name in SETS]
    for _, pairs in sets:
        everything += pairs
    rng = random.Random(0)
    sets.append(("mismatched pairs", [(rng.choice(everything)[0], rng.choice(everything)[1])
                                      for _ in range(min(args.n, len(everything)))]))
    for name, pairs in sets:
        for mode in args.mode:
            rate, acc = bench(pairs, mode, args.repeats)
            print(f"| {name:<22} | {mode:<7} | {len(pairs):>9} | {rate:>11.0f} | {acc:>8.3f} |")
    worst = 0.0
    for resp in ADVERSARIAL:
        for mode in args.mode:
            verifier._cache_clear()
            t = time.perf_counter()
            verifier.reward(resp, "1", mode=mode)
            worst = max(worst, time.perf_counter() - t)
    print(f"slowest single 100k-character adversarial response: {worst * 1000:.1f} ms")


if __name__ == "__main__":
    main()
