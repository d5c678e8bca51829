"""Probes of the mixed case beyond BEO's kernel objective, in bench/efficacy.py's harness.

Can any perturbation within the budget push a victim trained on half protected, half clean images below
the clean half alone? docs/study.md found no BEO setting and no baseline that does on Fashion-MNIST. These
two poisons attack the mixed case directly. They are experiments, not product methods: one that worked would
become a method in ue_core/methods.

    python bench/mixing_probes.py --name align-e16 --probe alignment --eps 16/255 --steps 150 --seeds 0 1
    python bench/mixing_probes.py --name classwise-e16 --probe class-pattern --eps 16/255 --seeds 0 1
    python bench/mixing_probes.py --name pattern-beo-e16 --probe class-pattern-then-beo --eps 16/255 \
        --rounds 20 --release-rounds 10 --seeds 0 1
    python bench/mixing_probes.py --name classwise-beo-e16 --probe classwise-beo --eps 16/255 \
        --rounds 20 --release-rounds 10 --seeds 0 1

- ``alignment``: gradient alignment with the reversed clean gradient. This is a bilevel objective cut to one
  unrolled training step, after Fowl et al., "Preventing Unauthorized Use of Proprietary Data: Poisoning
  for Secure Dataset Release", 2021. A small CNN (width 32, not the victim) is trained on the clean images
  (plain recipe, the victims' epochs), and its checkpoint after every epoch is kept. For each batch B of the
  protected images, signed steps on δ_B minimise

      A(δ_B) = 1 + cos(∇θ CE(f_θ(x_B + δ_B), y_B), ∇θ CE(f_θ(X, Y)))        (X, Y: all the clean images)

  so that a training step on the protected batch ascends the clean loss. A is 0 when the two gradients are
  opposed. ``--checkpoints last`` aligns at the trained model; ``trajectory`` draws one epoch's checkpoint
  per batch, for victims that train from scratch. The model is in eval mode, so batch norm uses its
  running statistics. Each step takes a signed step of ``--step-size`` for every batch, then projects δ
  to the L∞ ball and to [0, 1].
- ``class-pattern``: one pattern per class, δ = ε · sign(m_{(y+1) mod C} − m_y), where m_c is the mean clean
  image of class c. It is the L∞-bounded step towards the next class's mean image, shared by every
  protected image of a class. So it is a class-wise shortcut that points at wrong-class natural features.
- ``class-pattern-then-beo``: BEO (the ``--preset``'s settings, ``fashion-mnist-strong`` by default) started
  from the class pattern instead of δ = 0: does the kernel objective's ascent strengthen the strongest
  poison measured here, or wear it away? Every release of the run (``--release-rounds`` and the last) gets
  a results line, as bench/efficacy.py writes them.
- ``classwise-beo``: BEO (the ``--preset``'s settings) whose every step follows the class mean of the pixel
  gradient, so every image of a class moves the same way (up to the clipping to [0, 1]): a class-wise BEO,
  as error-minimising noise has a class-wise variant (Huang et al., ICLR 2021). Results as above.

Each run appends one line to the results file, with the fields bench/efficacy.py writes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from efficacy import (  # bench/efficacy.py, beside this
    add_harness_arguments,
    clean_and_test,
    measure_release,
    record_releases,
    round_overrides,
)

from pipelines.config import load_protect_config
from ue_core.config import parse_fraction
from ue_core.methods.base import release_of
from ue_core.methods.beo import BEO, pixel_gradient
from ue_core.models import build_model
from ue_core.pga import Budget, PixelState, ascent_step
from ue_core.training import fit, recipe
from ue_core.views import View

PROBES = ("alignment", "class-pattern", "class-pattern-then-beo", "classwise-beo")


def class_pattern(images: torch.Tensor, labels: torch.Tensor, num_classes: int, eps: float) -> torch.Tensor:
    """δ (N, C, H, W) = eps · sign(m_{(y+1) mod C} − m_y) for images (N, C, H, W) in [0, 1] and labels (N,)."""
    means = torch.stack([images[labels == c].mean(0) for c in range(num_classes)])
    patterns = eps * torch.sign(means.roll(-1, dims=0) - means)
    return patterns[labels]


class BEOFromClassPattern(BEO):
    """BEO whose ascent starts at the class pattern (clipped to [0, 1]) instead of δ = 0."""

    def initial_state(self, images: torch.Tensor, labels: torch.Tensor, num_classes: int) -> PixelState:
        state = PixelState.zeros(tuple(images.shape))
        pattern = class_pattern(images, labels, num_classes, self.budget.eps)
        state.delta.copy_((images + pattern).clamp(0, 1) - images)
        return state


def class_mean(values: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Every row of values (N, ...) replaced by the mean of the rows of its class, labels (N,)."""
    members = F.one_hot(labels).float()  # (N, max label + 1)
    means = (members.T @ values.flatten(1)) / members.sum(0).clamp_min(1)[:, None]
    return (members @ means).reshape(values.shape)


class ClasswiseBEO(BEO):
    """BEO whose every step follows the class mean of the pixel gradient (one direction per class)."""

    def step_pixels(self, surrogate: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                    state: PixelState, feature_gradients: list[torch.Tensor], views: list[View | None]) -> PixelState:
        config = self.config
        gradient = pixel_gradient(surrogate, images + state.delta, feature_gradients, views, config.batch_size,
                                  self.device, config.compute)
        return ascent_step(state, class_mean(gradient, labels), images, self.budget, config.pga)


def flat_gradient(loss: torch.Tensor, params: list[torch.Tensor], create_graph: bool = False) -> torch.Tensor:
    """∇ of a scalar ``loss`` with respect to ``params``, flattened into one vector (P,)."""
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params, create_graph=create_graph)])


def gradient_alignment(images: torch.Tensor, labels: torch.Tensor, num_classes: int, eps: float,
                       steps: int, step_size: float, epochs: int, checkpoints: str, batch_size: int = 250,
                       seed: int = 0) -> tuple[torch.Tensor, list[float]]:
    """δ (N, C, H, W) that opposes each batch's training gradient to the clean gradient; see the module
    docstring. Returns δ and the mean alignment A after each step (0 is fully opposed; 1 is orthogonal)."""
    model = build_model("small_cnn", num_classes, images.shape[1], images.shape[-1], seed=seed)
    states: list[dict[str, torch.Tensor]] = []
    fit(model, images, labels, recipe("plain", epochs=epochs), seed=seed,
        on_epoch_end=lambda _: states.append({k: v.clone() for k, v in model.state_dict().items()}))
    if checkpoints == "last":
        states = states[-1:]
    model.eval()
    params = list(model.parameters())
    clean_gradients = []
    for state in states:
        model.load_state_dict(state)
        clean_gradients.append(flat_gradient(F.cross_entropy(model(images), labels), params))
    delta = torch.zeros_like(images)
    generator = torch.Generator().manual_seed(seed)
    trace = []
    for step in range(steps):
        total = 0.0
        for batch in torch.randperm(len(images), generator=generator).split(batch_size):
            k = int(torch.randint(len(states), (1,), generator=generator))
            model.load_state_dict(states[k])
            d = delta[batch].clone().requires_grad_(True)
            poison_loss = F.cross_entropy(model((images[batch] + d).clamp(0, 1)), labels[batch])
            alignment = 1 + F.cosine_similarity(flat_gradient(poison_loss, params, create_graph=True),
                                                clean_gradients[k], dim=0)
            (grad,) = torch.autograd.grad(alignment, d)
            with torch.no_grad():
                stepped = (d - step_size * grad.sign()).clamp(-eps, eps)
                delta[batch] = (images[batch] + stepped).clamp(0, 1) - images[batch]
            total += float(alignment.detach()) * len(batch)
        trace.append(total / len(images))
        print(f"alignment step {step + 1}/{steps}: A = {trace[-1]:.4f}", flush=True)
    return delta, trace


BEO_PROBES: dict[str, type[BEO]] = {"class-pattern-then-beo": BEOFromClassPattern, "classwise-beo": ClasswiseBEO}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="the run's name in the results file")
    parser.add_argument("--probe", choices=PROBES, required=True)
    parser.add_argument("--eps", default="16/255")
    parser.add_argument("--steps", type=int, default=150, help="alignment: signed steps over every batch")
    parser.add_argument("--step-size", default="1/255", help="alignment: the signed step")
    parser.add_argument("--checkpoints", choices=("last", "trajectory"), default="last")
    parser.add_argument("--preset", default="fashion-mnist-strong", help="BEO probes: BEO's settings")
    parser.add_argument("--rounds", type=int, default=None, help="BEO probes: rounds (the preset's)")
    parser.add_argument("--release-rounds", default="", help="BEO probes: rounds released early")
    add_harness_arguments(parser)
    args = parser.parse_args()
    if args.probe in BEO_PROBES:
        beo_probe(args, BEO_PROBES[args.probe])
        return
    clean, test = clean_and_test(args)
    images, labels = clean.tensors()
    eps = parse_fraction(args.eps)
    started = time.perf_counter()
    settings: dict[str, object] = {}
    if args.probe == "class-pattern":
        delta = class_pattern(images, labels, clean.num_classes, eps)
    else:
        delta, trace = gradient_alignment(images, labels, clean.num_classes, eps, args.steps,
                                          parse_fraction(args.step_size), args.epochs, args.checkpoints)
        settings = {"steps": args.steps, "step_size": args.step_size, "checkpoints": args.checkpoints,
                    "alignment_first": round(trace[0], 4), "alignment_last": round(trace[-1], 4)}
    seconds = time.perf_counter() - started
    out = Path(args.out)
    record = {"name": args.name, "method": f"probe:{args.probe}", "eps": round(eps * 255, 3), "rounds": None,
              "overrides": settings, "seconds_protect": round(seconds, 1), "size": args.size, "victim": args.victim}
    record |= measure_release(clean, test, release_of(clean, delta, Budget(eps=eps)), args, out)
    with out.open("a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record), flush=True)


def beo_probe(args: argparse.Namespace, method: type[BEO]) -> None:
    """One run of a BEO variant with the ``--preset``'s settings, a results line per release."""
    overrides = {"budget.eps": args.eps, "data.subset": args.size, **round_overrides(args)}
    config = load_protect_config(args.preset, overrides=overrides)
    torch.manual_seed(0)
    clean, test = clean_and_test(args)
    started = time.perf_counter()
    result = method(config.budget, config.beo, test_set=test).protect(clean, progress=True)
    record_releases(args, config, {"preset": args.preset, **overrides, "probe": args.probe}, result,
                    time.perf_counter() - started, clean, test)


if __name__ == "__main__":
    main()
