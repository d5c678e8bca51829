"""Benchmark: the exact Bayes-error estimator (value + gradient) against the GEMM floor it needs.

The exact estimator needs 2·N²·D multiply-adds in GEMMs (the kernel's distance GEMM and M @ z). The
floor is those GEMMs timed alone with torch.mm, on the same row chunks, in the same run. The estimator
itself runs two passes (stats, then gradient), recomputing the kernel in the second, so 3·N²·D
multiply-adds plus the element-wise work: a ratio near 1.5–2× is what the design allows.

    python bench/bayes_error.py                      # N=20000, D=512, C=10, float32 (the target)
    python bench/bayes_error.py --n 4000 --repeats 1 # a quick look

Prints one Markdown table row for bench/README.md. Peak memory is the growth of the process's maximum
resident set while the estimator runs (measured before anything else allocates big temporaries).
"""

from __future__ import annotations

import argparse
import datetime
import resource
import time

import torch

from ue_core import bayes_error


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def gemm_floor(z: torch.Tensor, chunk: int) -> float:
    """Seconds for the two GEMMs of the gradient pass, chunk by chunk: K-block = z_c zᵀ, then K-block @ z."""
    started = time.perf_counter()
    for start in range(0, len(z), chunk):
        block = torch.mm(z[start : start + chunk], z.T)
        torch.mm(block, z)
    return time.perf_counter() - started


def estimator_seconds(z: torch.Tensor, y: torch.Tensor, classes: int, sigma: float, memory_budget: int) -> float:
    started = time.perf_counter()
    bayes_error.estimate(z, y, classes, sigma=sigma, memory_budget=memory_budget)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--memory-budget-mb", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    y = torch.randint(0, args.classes, (args.n,))
    centres = torch.randn(args.classes, args.d)
    features = torch.relu(centres[y] + 1.5 * torch.randn(args.n, args.d))  # penultimate-like: ReLU
    z, _ = bayes_error.normalise_features(features)
    # a bandwidth on the scale of these features' neighbour distances (at σ = 0.3 every weight underflows
    # here, which the estimator refuses; σ does not change the arithmetic timed)
    sigma = bayes_error.nearest_neighbour_sigma(z, 0.75, generator=torch.Generator().manual_seed(0))
    budget = args.memory_budget_mb * 2**20
    chunk = bayes_error.chunk_rows(args.n, z.dtype, budget)

    before = peak_rss_bytes()
    estimator_seconds(z, y, args.classes, sigma, budget)  # warm-up, and the peak-memory measurement
    extra_memory = peak_rss_bytes() - before
    gemm_floor(z, chunk)  # warm-up
    estimator, floor = [], []
    for _ in range(args.repeats):  # interleaved, so both see the same machine load
        estimator.append(estimator_seconds(z, y, args.classes, sigma, budget))
        floor.append(gemm_floor(z, chunk))
    best_estimator, best_floor = min(estimator), min(floor)
    dense_bytes = args.n * args.n * args.d * 4
    print(f"threads={torch.get_num_threads()} chunk={chunk} rows sigma={sigma:.3f}; times in s, best of {args.repeats}")
    print("| date | N | D | C | estimator (s) | GEMM floor (s) | ratio | extra peak memory | N×N×D would be |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {datetime.date.today()} | {args.n} | {args.d} | {args.classes} | {best_estimator:.2f} | "
        f"{best_floor:.2f} | {best_estimator / best_floor:.2f}× | {extra_memory / 2**20:.0f} MiB | "
        f"{dense_bytes / 2**30:.0f} GiB |"
    )


if __name__ == "__main__":
    main()
