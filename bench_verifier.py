"""Math verification throughput (responses/s on one core) on the real reference solutions. Not a test.

    python bench_verifier.py [--data ../shared/data] [--n 3000]

Each row times `reward(solution, gold)` serially in this process (one core) for one data set, with the
parse cache cleared first so repeated golds do not flatter the numbers; a last row times mismatched
pairs (a solution against another problem's gold), the common case during RL.
"""
import argparse
import json
import random
import time
from pathlib import Path

import verifier


def load(data: Path, name: str, n: int) -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in open(data / f"{name}.jsonl", encoding="utf-8")]
    pairs = [(r["solution"], r["answer"]) for r in rows if r.get("solution")]
    return pairs[:n]


def bench(pairs) -> tuple[float, float]:
    verifier._parse.cache_clear()
    t = time.perf_counter()
    hits = sum(verifier.reward(resp, gold) for resp, gold in pairs)
    dt = time.perf_counter() - t
    return len(pairs) / dt, hits / len(pairs)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parent.parent / "shared" / "data")
    ap.add_argument("--n", type=int, default=3000)
    args = ap.parse_args()
    print(f"| {'set':<22} | {'responses':>9} | {'responses/s':>11} | {'reward=1':>8} |")
    print(f"|{'-' * 24}|{'-' * 11}|{'-' * 13}|{'-' * 10}|")
    everything = []
    for name in ("math500", "minerva_math", "aime2024", "gsm8k_test", "math_train"):
        pairs = load(args.data, name, args.n)
        everything += pairs
        rate, acc = bench(pairs)
        print(f"| {name:<22} | {len(pairs):>9} | {rate:>11.0f} | {acc:>8.3f} |")
    rng = random.Random(0)
    mismatched = [(rng.choice(everything)[0], rng.choice(everything)[1]) for _ in range(min(args.n, len(everything)))]
    rate, acc = bench(mismatched)
    print(f"| {'mismatched pairs':<22} | {len(mismatched):>9} | {rate:>11.0f} | {acc:>8.3f} |")


if __name__ == "__main__":
    main()
