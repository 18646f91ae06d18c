"""
miniature.py: the paper's main figure in miniature, on a laptop CPU in under 15 minutes.

    python miniature.py                  # -> runs/miniature/{compare.png, compare.json, metrics.png}

1. The tiny model's supervised warm start on the built-in task (train.py makes it once and caches it).
2. From that same warm start and seed: RL with GRPO, and RL with CaSP (train.py, the demo's settings).
3. pass@K for K = 1 .. 64 of the warm start, the GRPO policy and the CaSP policy on held-out problems
   (eval.py: 64 samples per problem), side by side in one table and one plot (compare.png); the mean
   probability of candidates 1..N and the entropy over training steps of both runs (metrics.png).

What the paper predicts: GRPO sharpens the top-1 candidate (p1 up, p2..pN and entropy down), which
raises pass@1 and flattens the pass@K curve; CaSP keeps more mass on candidates 2..N, so its curve stays
higher at large K. At this scale (a 0.8M-parameter model, 30 RL steps) the effect may be small or absent:
the script reports whatever it measures.
"""
import argparse
from pathlib import Path

import eval as ev
import train
from model import casp_home


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    p.add_argument("--out", default="runs/miniature")
    p.add_argument("--steps", type=int, default=30, help="RL steps of each run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--problems", type=int, default=64, help="held-out problems evaluated")
    p.add_argument("--n", type=int, default=64, help="samples per problem (the largest K)")
    args = p.parse_args(argv)
    out = Path(args.out)

    runs = {}
    for loss in ("grpo", "casp"):
        run = out / loss
        train.main(["--model", "tiny", "--loss", loss, "--steps", str(args.steps), "--seed", str(args.seed),
                    "--eval-every", "5", "--out", str(run)])
        runs[loss] = run / f"ckpt-{args.steps:06d}" / "model"

    ks = [str(k) for k in (1, 2, 4, 8, 16, 32, 64) if k <= args.n]
    evals = {}
    for name, model in [("warm-start", casp_home() / "tiny"), ("grpo", runs["grpo"]), ("casp", runs["casp"])]:
        evals[name] = out / "eval" / name
        ev.main(["--model", str(model), "--data", "synthetic", "--limit", str(args.problems), "--n", str(args.n),
                 "--k", *ks, "--max-new-tokens", "48", "--seed", str(args.seed), "--out", str(evals[name]),
                 "--no-plot"])
    ev.main(["--compare", *map(str, evals.values()), "--out", str(out)])
    ev.main(["--plot-metrics", str(out / "grpo" / "metrics.jsonl"), str(out / "casp" / "metrics.jsonl"),
             "--out", str(out)])


if __name__ == "__main__":
    main()
