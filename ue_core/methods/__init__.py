"""Protection methods, one file each on the shared base class (ue_core.methods.base.ProtectionMethod):
BEO, the product, and the baselines it is compared with.

    beo      ue_core/methods/beo.py            Bayes-error optimisation (Zhang et al., AAAI 2026)
    random   ue_core/methods/random_noise.py   uniform ±ε noise
    em       ue_core/methods/em.py             error-minimising noise (Huang et al., ICLR 2021)
    tap      ue_core/methods/tap.py            targeted adversarial poisoning (Fowl et al., NeurIPS 2021)
    ops      ue_core/methods/ops.py            one-pixel shortcut, L0 (Wu et al., ICLR 2023)
    ar       ue_core/methods/ar.py             autoregressive perturbations (Sandoval-Segura et al., NeurIPS 2022)
    lsp      ue_core/methods/lsp.py            linearly separable patch noise, L2 (Yu et al., KDD 2022)

``METHODS`` maps each name to its class; a protect job's config builds one with ``ProtectConfig.build``.
"""

from ue_core.methods.ar import AutoregressivePerturbation
from ue_core.methods.base import ProtectionMethod
from ue_core.methods.beo import BEO
from ue_core.methods.em import ErrorMinimisingNoise
from ue_core.methods.lsp import LinearlySeparablePerturbation
from ue_core.methods.ops import OnePixelShortcut
from ue_core.methods.random_noise import RandomNoise
from ue_core.methods.tap import TargetedAdversarialPoisoning

METHODS: dict[str, type[ProtectionMethod]] = {
    "beo": BEO, "random": RandomNoise, "em": ErrorMinimisingNoise, "tap": TargetedAdversarialPoisoning,
    "ops": OnePixelShortcut, "ar": AutoregressivePerturbation, "lsp": LinearlySeparablePerturbation,
}

__all__ = [
    "BEO", "METHODS", "AutoregressivePerturbation", "ErrorMinimisingNoise", "LinearlySeparablePerturbation",
    "OnePixelShortcut", "ProtectionMethod", "RandomNoise", "TargetedAdversarialPoisoning",
]
