"""What a sweep reports: its results as CSV and Markdown, its releases' table, and the accuracy-versus-ratio
figure (pipelines/sweep.py runs the sweep and publishes these)."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass

import matplotlib.pyplot as plt
import numpy as np

from pipelines.config import ReleaseSpec, budget_label
from ue_core.release import read_manifest


def release_label(method: str | None, eps: float | None, settings: str = "", norm: str | None = None) -> str:
    """"beo eps=8/255", "ops l0=1", "lsp l2=168/255" (plus the release's protect-axis settings) for a release
    (``norm`` None: L∞, as in results from before sweeps had other norms), "eps=—" for no release."""
    if method is None or eps is None:
        return "eps=—"
    return ReleaseSpec(method, eps, {}, norm or "linf").label + (f" {settings}" if settings else "")


@dataclass(frozen=True)
class TrialOutcome:
    """One row of the results table: the trial, how it ended, and its clean test accuracies in [0, 1]."""

    arm: str
    eps: float | None
    norm: str | None
    ratio: float
    victim: str
    defence: str
    method: str | None
    settings: str
    evaluation: str
    status: str
    final_test_accuracy: float | None
    best_test_accuracy: float | None
    error: str




def results_table(outcomes: list[TrialOutcome]) -> tuple[str, str]:
    """The outcomes as CSV and as a Markdown table (accuracies in percent)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(TrialOutcome.__dataclass_fields__), lineterminator="\n")
    writer.writeheader()
    writer.writerows(asdict(o) for o in outcomes)
    header = ("| arm | method | budget | settings | ratio | victim | defence | evaluation | status | final test acc (%) "
              "| best test acc (%) |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|---|"]
    for o in outcomes:
        eps = "—" if o.eps is None else budget_label(o.eps, o.norm or "linf")
        final = "—" if o.final_test_accuracy is None else f"{100 * o.final_test_accuracy:.2f}"
        best = "—" if o.best_test_accuracy is None else f"{100 * o.best_test_accuracy:.2f}"
        lines.append(f"| {o.arm} | {o.method or '—'} | {eps} | {o.settings or '—'} | {o.ratio:g} | {o.victim} "
                     f"| {o.defence} | {o.evaluation or '—'} | {o.status} | {final} | {best} |")
    return buffer.getvalue(), "\n".join(lines) + "\n"


def ranked_table(outcomes: list[TrialOutcome], metric: str, mode: str, searched: str) -> str:
    """The mixed trials that ended, ranked by ``metric`` (a TrialOutcome accuracy field; ``mode`` "min" ranks
    the lowest first, as for an attack, "max" the highest, as for a defence) among the trials that differ
    only in what the search sampled: ``searched`` "protect" (the release's settings: trials with the same
    ratio, victim, defence and evaluation settings compete) or "evaluate" (the evaluation settings: trials
    of the same release, ratio, victim and defence compete). Beside each, the clean-only reference of its
    ratio, victim, defence and evaluation settings, when there is one (percent)."""
    def group(o: TrialOutcome) -> tuple:
        fixed = o.evaluation if searched == "protect" else release_label(o.method, o.eps, o.settings, o.norm)
        return (o.ratio, o.victim, o.defence, fixed)

    references = {(o.ratio, o.victim, o.defence, o.evaluation): getattr(o, metric) for o in outcomes
                  if o.arm == "clean-only" and getattr(o, metric) is not None}
    ranked = [o for o in outcomes if o.arm == "mixed" and getattr(o, metric) is not None]
    ranked.sort(key=lambda o: (group(o), getattr(o, metric) if mode == "min" else -getattr(o, metric)))
    order = "lowest" if mode == "min" else "highest"
    among = "evaluation settings" if searched == "protect" else "release"
    title = (f"The mixed trials ranked by {metric.replace('_', ' ')} ({order} first), per ratio, victim, defence "
             f"and {among}:")
    lines = [title, "",
             "| ratio | victim | defence | rank | release | evaluation | accuracy (%) | clean-only (%) |",
             "|---|---|---|---|---|---|---|---|"]
    rank, previous = 0, None
    for o in ranked:
        rank = rank + 1 if group(o) == previous else 1
        previous = group(o)
        reference = references.get((o.ratio, o.victim, o.defence, o.evaluation))
        lines.append(f"| {o.ratio:g} | {o.victim} | {o.defence} | {rank} | "
                     f"{release_label(o.method, o.eps, o.settings, o.norm)} | {o.evaluation or '—'} | "
                     f"{100 * getattr(o, metric):.2f} | {'—' if reference is None else f'{100 * reference:.2f}'} |")
    return "\n".join(lines) + "\n"


def releases_table(release_uris: dict[str, str]) -> str:
    """A Markdown table of the sweep's releases from their manifests: how visible each perturbation is
    (PSNR, SSIM against the clean images) and where it lives."""
    lines = ["| release | PSNR (dB) | SSIM | uri |", "|---|---|---|---|"]
    for label, uri in release_uris.items():
        summary = read_manifest(uri)["summary"]
        # a release published before PSNR and SSIM were recorded shows —
        psnr_db = f"{summary['psnr_db']:.2f}" if "psnr_db" in summary else "—"
        ssim = f"{summary['ssim']:.4f}" if "ssim" in summary else "—"
        lines.append(f"| {label} | {psnr_db} | {ssim} | {uri} |")
    return "\n".join(lines) + "\n"


def sweep_plot(outcomes: list[TrialOutcome]) -> plt.Figure:
    """Per victim × defence: accuracy versus ratio (a line per release, i.e. method × budget, the clean-only
    reference dashed, clean-all at ratio 0 on every line) and a heatmap of release × ratio. Failed trials are
    gaps."""
    panels = sorted({(o.victim, o.defence, o.evaluation) for o in outcomes})
    labels = list(dict.fromkeys(release_label(o.method, o.eps, o.settings, o.norm) for o in outcomes if o.method is not None))
    ratios = sorted({o.ratio for o in outcomes})
    figure, axes = plt.subplots(len(panels), 2, figsize=(10, 3.6 * len(panels)), squeeze=False)
    for row, (victim, defence, evaluation) in enumerate(panels):
        done = [o for o in outcomes if (o.victim, o.defence, o.evaluation) == (victim, defence, evaluation)
                and o.final_test_accuracy is not None]
        accuracies = {(o.arm, release_label(o.method, o.eps, o.settings, o.norm), o.ratio): 100 * o.final_test_accuracy
                      for o in done}
        clean_all = accuracies.get(("clean-all", release_label(None, None), 0.0), math.nan)
        table = np.array([[clean_all if r == 0 else accuracies.get(("mixed", label, r), math.nan) for r in ratios]
                          for label in labels])
        lines = axes[row, 0]
        for label, values in zip(labels, table):
            lines.plot(ratios, values, marker="o", label=f"mixed, {label}")
        reference = [clean_all if r == 0 else accuracies.get(("clean-only", release_label(None, None), r), math.nan)
                     for r in ratios]
        lines.plot(ratios, reference, marker="s", linestyle="--", color="black", label="clean-only (reference)")
        lines.set_xlabel("mixing ratio r (fraction of training images protected)")
        lines.set_ylabel("clean test accuracy (%)")
        lines.set_title(" ".join(filter(None, [f"{victim}, defence {defence}", evaluation])), fontsize=9)
        lines.legend(fontsize=7)
        heat = axes[row, 1]
        image = heat.imshow(table, aspect="auto", cmap="viridis", origin="lower")
        heat.set_xticks(range(len(ratios)), [f"{r:g}" for r in ratios])
        heat.set_yticks(range(len(labels)), labels)
        heat.set_xlabel("mixing ratio r")
        heat.set_ylabel("release")
        for (i, j), value in np.ndenumerate(table):
            if not math.isnan(value):
                heat.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=7, color="white")
        figure.colorbar(image, ax=heat, label="test accuracy (%)")
    figure.tight_layout()
    return figure
