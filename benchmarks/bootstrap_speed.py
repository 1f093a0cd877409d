"""Speed of the problem-level bootstrap (warmstart.metrics): prints one JSON object.

Times 10,000 resamples x 1,000 problems x 8 models (the study's eight models on a
MathVista-sized split) three ways, in one run so the ratios compare like with like:

* ``bootstrap_many``: one counts matrix per chunk of resamples times the ``P x M`` value
  matrix (what ``summarize`` / ``paired_compare`` use);
* ``naive_gather``: the textbook form, ``values[idx_BP].mean(axis=1)`` per model, on the
  very same resample indices (a check that both give the same intervals is included);
* ``bootstrap_ratio``: the token-weighted entropy form (ratio of resampled sums), one row.

Usage: ``python benchmarks/bootstrap_speed.py [--B 10000] [--P 1000] [--M 8] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from warmstart import metrics as M


def best_of(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--B", type=int, default=10_000)
    ap.add_argument("--P", type=int, default=1_000)
    ap.add_argument("--M", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    values_MP = (rng.random((args.M, args.P)) < rng.random((args.M, 1))).astype(np.float64)

    t_many, (point, lo, hi) = best_of(lambda: M.bootstrap_many(values_MP, args.B, seed=0), args.repeats)

    def naive():
        idx = M.bootstrap_indices(args.P, args.B, seed=0)
        means_BM = np.stack([values_MP[m][idx].mean(axis=1) for m in range(args.M)], axis=1)
        return np.quantile(means_BM, [0.025, 0.975], axis=0)

    t_naive, (lo_n, hi_n) = best_of(naive, args.repeats)
    t_idx, _ = best_of(lambda: M.bootstrap_indices(args.P, args.B, seed=0), args.repeats)
    num, den = rng.random(args.P) * 50, rng.integers(20, 60, args.P).astype(np.float64)
    t_ratio, _ = best_of(lambda: M.bootstrap_ratio(num, den, args.B, seed=0), args.repeats)

    print(
        json.dumps(
            {
                "B": args.B,
                "P": args.P,
                "M": args.M,
                "bootstrap_many_s": round(t_many, 4),
                "naive_gather_s": round(t_naive, 4),
                "speedup_vs_naive": round(t_naive / t_many, 2),
                "draw_indices_only_s": round(t_idx, 4),
                "bootstrap_ratio_1row_s": round(t_ratio, 4),
                "same_intervals_as_naive": bool(np.allclose(lo, lo_n) and np.allclose(hi, hi_n)),
                "numpy": np.__version__,
                "cpus": os.cpu_count(),
                "machine": platform.machine(),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
