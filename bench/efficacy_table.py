"""The study's tables from bench/efficacy.py's results: one Markdown row per (run, rounds, victim recipe).

    python bench/efficacy_table.py                       # every run in bench/results/efficacy.jsonl
    python bench/efficacy_table.py beo-e16-fixed-target-sigma1-s2 em-e16 --recipes plain

Each accuracy is the mean over the seeds the run has for that recipe, with the seeds' spread (max − min) in
brackets when there are two or more; "mixed − clean-only" and "poison-only drop" (clean-all − poison-only)
are computed per seed, then averaged. When a run name appears more than once (a re-run, or the same release
evaluated with another recipe or seed), its lines merge: a later line's victims replace the same recipe and
seed of an earlier one and add the others; the release's own figures are the later line's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ARMS = ("clean-all", "clean-only", "mixed", "poison-only")


def mean_and_spread(values: list[float]) -> str:
    mean = sum(values) / len(values)
    return f"{mean:.2f}" if len(values) < 2 else f"{mean:.2f} ({max(values) - min(values):.1f})"


def rows(records: list[dict], recipes: list[str] | None) -> list[str]:
    """Markdown rows for ``records`` (efficacy.jsonl lines), in file order."""
    lines = []
    for record in records:
        by_recipe: dict[str, list[dict[str, float]]] = {}
        for key, arms in record.items():
            if "/seed" in key:
                by_recipe.setdefault(key.split("/")[0], []).append(arms)
        for recipe_name, seeds in by_recipe.items():
            if recipes and recipe_name not in recipes:
                continue
            cells = [mean_and_spread([seed[arm] for seed in seeds]) for arm in ARMS]
            mixed_gap = mean_and_spread([seed["mixed"] - seed["clean-only"] for seed in seeds])
            drop = mean_and_spread([seed["clean-all"] - seed["poison-only"] for seed in seeds])
            rounds = record["rounds"] if record["method"] == "beo" else "—"
            target_rate = record.get("fixed_model_target_rate")
            lines.append(
                f"| {record['name']} | {rounds} | {recipe_name} × {len(seeds)} | {record['psnr_db']:.1f} / "
                f"{record['ssim']:.3f} | {record['bayes_error_fixed_release']:.3f} | "
                f"{'—' if target_rate is None else f'{target_rate:.2f}'} | " + " | ".join(cells)
                + f" | {mixed_gap} | {drop} |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="run names (default: all)")
    parser.add_argument("--recipes", nargs="+", default=None)
    parser.add_argument("--results", default="bench/results/efficacy.jsonl")
    args = parser.parse_args()
    records = [json.loads(line) for line in Path(args.results).read_text().splitlines() if line.strip()]
    latest: dict[tuple[str, object], dict] = {}
    for record in records:  # a later line of a name replaces its earlier victims of the same recipe and seed
        key = (record["name"], record.get("rounds"))
        latest[key] = {**latest.get(key, {}), **record}
    chosen = [r for r in latest.values() if not args.names or r["name"] in args.names]
    if args.names:
        chosen.sort(key=lambda r: (args.names.index(r["name"]), r.get("rounds") or 0))
    print("| run | rounds | victims (recipe × seeds) | PSNR / SSIM | β̂ fixed | target rate (%) | "
          "clean-all | clean-only | mixed | poison-only | mixed − clean-only | poison-only drop |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows(chosen, args.recipes)))


if __name__ == "__main__":
    main()
