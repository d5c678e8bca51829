"""The sweep's config: the grid over methods, budgets, ratios, victims, defences and any other config key, and
the releases it needs.

Budgets: the grid's ``eps`` axis gives every method an L∞ ε (8/255, …). A method whose budget is not an L∞ ε
(OPS: L0, LSP: L2; AR in its paper's L2 setting) takes a fixed budget of its own from the sweep's top-level
``budgets`` key instead (``budgets: {ops: {norm: l0, eps: 1}}``): that budget replaces the eps axis for that
method, which then has one release per point of the protect axes rather than one per grid ε. Why one fixed
budget rather than an eps axis per norm: the baselines are compared at their authors' settings, and a
per-method axis would need its own ranges per norm; a second budget of one method is a second sweep (or
``--set budgets.ar.eps=…``). Labels show the budget with its norm (:func:`budget_label`), and a release's
address hashes its whole protect config, norm included, so two budgets never share a release."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from itertools import product
from typing import Any

from pipelines.config.evaluate import EvaluateConfig, VictimConfig
from pipelines.config.files import read_yaml, upgrade_keys
from pipelines.config.protect import METHODS, ProtectConfig, load_protect_config
from ue_core.config import flatten, from_dict, parse_fraction, read_value, set_dotted, to_dict
from ue_core.defences import parse_defences
from ue_core.errors import InvalidInputError
from ue_core.methods import METHODS as METHOD_CLASSES
from ue_core.methods.base import require_norm
from ue_core.pga import Budget

RESERVED_PROTECT_AXES = {"method": "grid.method", "budget.eps": "grid.eps"}
RESERVED_EVALUATE_AXES = {"ratio": "grid.ratio", "victim.model": "grid.victim", "defence.names": "grid.defence",
                          "modes": "the arms the ratios imply"}


@dataclass(frozen=True)
class SweepGrid:
    """The axes of a sweep; every combination is a trial (see pipelines/sweep.py for the arms it implies).

    Attributes:
        method: protection methods (ProtectConfig.method: BEO and the baselines it is compared with).
        eps: L∞ budgets, each in (0, 1) (numbers or fractions such as "8/255"), for every method without a
            budget of its own in SweepConfig.budgets.
        ratio: mixing ratios, each in [0, 1].
        victim: victim models (ue_core.models.MODEL_NAMES).
        defence: defence specs, each "none" or names joined by "+" (ue_core.defences).
        protect: any other protect-config key (dotted, e.g. ``beo.rounds``, ``beo.estimator.sigma``) → its
            values: each combination is a release per method × ε (a key the method never reads adds none;
            a method with its own budget has one ε, its budget's).
        evaluate: any other evaluate-config key (dotted, e.g. ``victim.recipe``, ``seed``) → its values: each
            combination repeats every arm.
    """

    method: tuple[str, ...] = ("beo",)
    eps: tuple[float, ...] = (8 / 255,)
    ratio: tuple[float, ...] = (0.0, 0.5, 1.0)
    victim: tuple[str, ...] = ("resnet18",)
    defence: tuple[str, ...] = ("none",)
    protect: dict[str, Any] = field(default_factory=dict)
    evaluate: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("method", "eps", "ratio", "victim", "defence"):
            object.__setattr__(self, name, _axis_values(f"sweep grid.{name}", getattr(self, name)))
        object.__setattr__(self, "eps", tuple(parse_fraction(e) for e in self.eps))
        object.__setattr__(self, "ratio", tuple(parse_fraction(r) for r in self.ratio))
        for eps in self.eps:
            if not 0 < eps < 1:
                raise InvalidInputError(f"sweep grid.eps: each budget must be in (0, 1), got {eps}")
        for ratio in self.ratio:
            if not 0 <= ratio <= 1:
                raise InvalidInputError(f"sweep grid.ratio: mixing ratio must be in [0, 1], got {ratio}")
        for victim in self.victim:
            VictimConfig(model=victim)  # names an unknown model
        for method in self.method:
            if method not in METHODS:
                raise InvalidInputError(f"sweep grid.method: unknown {method!r}; expected one of {', '.join(METHODS)}")
        object.__setattr__(self, "defence", tuple("+".join(parse_defences(d)) or "none" for d in self.defence))
        for section, reserved in (("protect", RESERVED_PROTECT_AXES), ("evaluate", RESERVED_EVALUATE_AXES)):
            axes = getattr(self, section)
            if not isinstance(axes, dict):
                raise InvalidInputError(f"sweep grid.{section}: expected a mapping of dotted keys to lists of values")
            axes = flatten(axes)  # a --set grid.protect.beo.rounds=[…] arrives nested
            if section == "protect":
                axes = upgrade_keys(axes)
            for key in axes:
                if key in reserved:
                    raise InvalidInputError(f"sweep grid.{section}: {key} is an axis of its own; use {reserved[key]}")
            object.__setattr__(self, section, {k: _axis_values(f"sweep grid.{section}.{k}", v) for k, v in axes.items()})

    def protect_points(self) -> list[dict[str, Any]]:
        """Every combination of the ``protect`` axes, as {dotted key: value} ([{}] without such axes)."""
        return _points(self.protect)

    def evaluate_points(self) -> list[dict[str, Any]]:
        """Every combination of the ``evaluate`` axes, as {dotted key: value} ([{}] without such axes)."""
        return _points(self.evaluate)


def _axis_values(name: str, values: Any) -> tuple[Any, ...]:
    values = tuple(values) if isinstance(values, (list, tuple)) else (values,)
    if not values or len({repr(v) for v in values}) != len(values):
        raise InvalidInputError(f"{name}: expected a non-empty list of distinct values")
    return values


def _points(axes: dict[str, tuple[Any, ...]]) -> list[dict[str, Any]]:
    return [dict(zip(axes, values)) for values in product(*axes.values())]


def settings_label(settings: dict[str, Any]) -> str:
    """{"beo.rounds": 50, "beo.estimator.sigma": 1.0} → "beo.rounds=50 beo.estimator.sigma=1.0" ("" for none)."""
    return " ".join(f"{key}={value}" for key, value in settings.items())


def budget_label(eps: float, norm: str = "linf") -> str:
    """A budget as labels show it: "eps=8/255" (L∞, in levels of 255, as sweeps have always shown it),
    "l2=168/255" (L2 when 255·eps is a whole number of levels, as the configs write it, else "l2=1" or
    "l2=0.5"), "l0=1" (changed pixels per image). Exact rather than rounded, since labels key the releases."""
    if norm == "l0":
        return f"l0={eps:g}"
    if norm == "l2":
        levels = eps * 255
        whole = not float(eps).is_integer() and abs(levels - round(levels)) < 1e-6
        return f"l2={round(levels)}/255" if whole else f"l2={eps:g}"
    return f"eps={eps * 255:g}/255"


@dataclass(frozen=True)
class ReleaseSpec:
    """One release of a sweep: a method at a budget (``eps`` under ``norm``) with the values of the grid's
    protect axes that it reads."""

    method: str
    eps: float
    settings: dict[str, Any]
    norm: str = "linf"

    @property
    def label(self) -> str:
        """"beo eps=16/255 beo.rounds=50", "ops l0=1", "lsp l2=168/255": what the tables, plots and trial names
        call this release (distinct for distinct releases of a sweep: the budget's norm is in it)."""
        return " ".join(filter(None, [f"{self.method} {budget_label(self.eps, self.norm)}",
                                      settings_label(self.settings)]))


SEARCH_SPACES = {  # the search spaces a sweep's search may draw from: Ray Tune's, by their Tune names
    "uniform": "[low, high]: a float, uniform",
    "loguniform": "[low, high]: a float, uniform in log space (low > 0)",
    "randint": "[low, high]: an integer, low included, high excluded",
    "choice": "[value, …]: one of the values",
}
RANK_METRICS = ("final_test_accuracy", "best_test_accuracy")


@dataclass(frozen=True)
class SweepSearch:
    """Keys sampled from Ray Tune's search spaces, besides the grid's axes: tuning an attack's parameter
    (``protect``) or a defence's or a victim's (``evaluate``).

    The points are drawn up front on the driver, with Tune's own samplers and ``seed`` (the same seed draws
    the same points, so a rerun reuses the releases it made), and become points of an axis like a grid's:
    each combines with every grid point of its section. Sampled floats are kept to 4 significant digits,
    which is what labels show. One section per sweep: sampling both would need points paired across the
    releases and the trials, not a product.

    Attributes:
        samples: how many points to draw (0: no search).
        seed: the draws' seed.
        metric: the trial result the ranking sorts by, one of RANK_METRICS.
        mode: "min" (an attack: the lower a victim's accuracy, the better the setting) or "max" (a defence).
        protect: dotted protect-config key → a space, e.g. ``beo.estimator.sigma: {loguniform: [0.3, 10]}``.
        evaluate: dotted evaluate-config key → a space, e.g. ``defence.jpeg_quality: {randint: [5, 50]}``.
    """

    samples: int = 0
    seed: int = 0
    metric: str = "final_test_accuracy"
    mode: str | None = None
    protect: dict[str, Any] = field(default_factory=dict)
    evaluate: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for section in ("protect", "evaluate"):
            spaces = getattr(self, section)
            if not isinstance(spaces, dict):
                raise InvalidInputError(f"sweep search.{section}: expected a mapping of dotted keys to search spaces")
            spaces = _flat_spaces(spaces)  # a --set search.protect.beo.estimator.sigma=… arrives nested
            if section == "protect":
                spaces = upgrade_keys(spaces)
            for key, space in spaces.items():
                _check_space(f"sweep search.{section}.{key}", space)
            object.__setattr__(self, section, spaces)
        if not self.protect and not self.evaluate:
            if self.samples:
                raise InvalidInputError("sweep search.samples: nothing to sample; "
                                        "give search.protect or search.evaluate")
            return
        if self.protect and self.evaluate:
            raise InvalidInputError("sweep search: sample protect keys or evaluate keys, not both in one sweep")
        if self.samples < 1:
            raise InvalidInputError(f"sweep search.samples: expected an integer >= 1, got {self.samples}")
        if self.metric not in RANK_METRICS:
            raise InvalidInputError(f"sweep search.metric: expected one of {', '.join(RANK_METRICS)}, "
                                    f"got {self.metric!r}")
        if self.mode not in ("min", "max"):
            raise InvalidInputError(f"sweep search.mode: expected min (tuning an attack: the lower a victim's "
                                    f"accuracy, the better) or max (a defence), got {self.mode!r}")

    @property
    def section(self) -> str | None:
        """"protect" or "evaluate": what the search samples (None: no search)."""
        return "protect" if self.protect else "evaluate" if self.evaluate else None

    def points(self, section: str) -> list[dict[str, Any]]:
        """The drawn points of ``section`` ("protect" or "evaluate"), {dotted key: value} each, in draw order;
        [{}] when the search samples the other section or nothing."""
        spaces = getattr(self, section)
        if not spaces:
            return [{}]
        import numpy as np
        from ray import tune

        random = np.random.RandomState(self.seed)
        domains = {key: getattr(tune, kind)(*args) if kind != "choice" else tune.choice(args)
                   for key, space in spaces.items() for kind, args in space.items()}
        points = []
        for _ in range(self.samples):
            point = {key: _plain(domain.sample(random_state=random)) for key, domain in domains.items()}
            if point not in points:  # a choice or randint space can draw a point twice
                points.append(point)
        return points


def _is_space(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in SEARCH_SPACES


def _flat_spaces(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"beo": {"estimator.sigma": {"loguniform": […]}}} → {"beo.estimator.sigma": {"loguniform": […]}}."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and not _is_space(value):
            flat.update(_flat_spaces(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _check_space(where: str, space: Any) -> None:
    """A one-line error naming ``where`` unless ``space`` is one {kind: arguments} of SEARCH_SPACES."""
    expected = "; ".join(f"{kind}: {meaning}" for kind, meaning in SEARCH_SPACES.items())
    if not _is_space(space):
        raise InvalidInputError(f"{where}: expected one search space ({expected}), got {space!r}")
    ((kind, args),) = space.items()
    if not isinstance(args, (list, tuple)) or not args:
        raise InvalidInputError(f"{where}: {kind} takes {SEARCH_SPACES[kind]}, got {args!r}")
    if kind == "choice":
        if len({repr(a) for a in args}) != len(args):
            raise InvalidInputError(f"{where}: choice takes distinct values, got {args!r}")
        return
    if len(args) != 2 or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
        raise InvalidInputError(f"{where}: {kind} takes {SEARCH_SPACES[kind]}, got {args!r}")
    low, high = args
    if kind == "randint" and not all(isinstance(a, int) for a in args):
        raise InvalidInputError(f"{where}: randint takes integers, got {args!r}")
    if not low < high or (kind == "loguniform" and low <= 0):
        raise InvalidInputError(f"{where}: {kind} takes {SEARCH_SPACES[kind]}, got {args!r}")


def _plain(value: Any) -> Any:
    """A drawn value as a plain Python value (numpy scalars unwrapped), a float to 4 significant digits."""
    value = value.item() if hasattr(value, "item") else value
    return float(f"{value:.4g}") if isinstance(value, float) else value


@dataclass(frozen=True)
class SweepConfig:
    """A sweep file: the source, how to protect it, how to evaluate, and the grid.

    Attributes:
        source: the clean dataset (a flag may replace it).
        protect_preset: the shipped protect preset the releases start from.
        protect: protect config keys merged over the preset (nested, as in a protect YAML); grid.method
            replaces method, grid.eps replaces budget.eps (budgets replaces the whole budget of the methods it
            names), and grid.protect the keys it names.
        evaluate: the evaluate config of every trial; the grid replaces ratio, victim.model, defence.names
            and the keys grid.evaluate names.
        grid: method × eps × protect axes (the releases) × ratio × victim × defence × evaluate axes.
        search: keys sampled from Ray Tune's search spaces (SweepSearch): its points multiply the grid's
            points of the section it samples; the results also rank the mixed trials by its metric.
        budgets: method → its own fixed budget, a mapping with both ``norm`` and ``eps`` (ue_core.pga.Budget,
            e.g. ``ops: {norm: l0, eps: 1}``, ``lsp: {norm: l2, eps: 168/255}``), checked against the norms
            the method is defined for. It replaces grid.eps for that method: one release per point of the
            protect axes, at this budget. A method not in grid.method is ignored (so ``--set grid.method=…``
            may narrow a sweep); an unknown method, a missing key or a bad budget is a one-line error naming
            ``budgets.METHOD``. Without it (every older sweep file), every method follows grid.eps.
        max_failures: how often a failed trial is retried (Ray Tune's FailureConfig).
    """

    source: str | None = None
    protect_preset: str | None = None
    protect: dict[str, Any] = field(default_factory=dict)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    grid: SweepGrid = field(default_factory=SweepGrid)
    budgets: dict[str, Any] = field(default_factory=dict)
    search: SweepSearch = field(default_factory=SweepSearch)
    max_failures: int = 1

    def __post_init__(self) -> None:
        if self.max_failures < 0:
            raise InvalidInputError(f"sweep max_failures: must be >= 0, got {self.max_failures}")
        object.__setattr__(self, "budgets", _read_budgets(self.budgets))
        for section, reserved in (("protect", RESERVED_PROTECT_AXES), ("evaluate", RESERVED_EVALUATE_AXES)):
            for key in getattr(self.search, section):
                if key in reserved or key in getattr(self.grid, section):
                    axis = reserved.get(key, f"grid.{section}.{key}")
                    raise InvalidInputError(f"sweep search.{section}: {key} is also an axis ({axis}); "
                                            "sample it or list it, not both")
        if "budget.norm" in self.grid.protect and set(self.budgets) & set(self.grid.method):
            raise InvalidInputError("sweep grid.protect: a budget.norm axis and budgets cannot both set the norm; "
                                    "drop one")
        self.releases()  # every release's protect config is valid before anything starts
        for settings in self.evaluate_points():
            self.evaluate_config(settings)  # and every trial's evaluate config

    def protect_points(self) -> list[dict[str, Any]]:
        """Every point of the protect axes: the grid's, each with every searched point (the product)."""
        return [{**grid, **drawn} for grid in self.grid.protect_points() for drawn in self.search.points("protect")]

    def evaluate_points(self) -> list[dict[str, Any]]:
        """Every point of the evaluate axes: the grid's, each with every searched point (the product)."""
        return [{**grid, **drawn} for grid in self.grid.evaluate_points() for drawn in self.search.points("evaluate")]

    def method_eps(self, method: str) -> tuple[float, ...]:
        """The budgets ``method`` is released at: its own budget's eps if it has one, else grid.eps."""
        return (self.budgets[method].eps,) if method in self.budgets else self.grid.eps

    def protect_config(self, method: str, eps: float, settings: dict[str, Any] | None = None) -> ProtectConfig:
        """The protect config of the release of ``method`` at budget ``eps`` with protect-axis ``settings``;
        a method with its own budget (``budgets``) takes its norm from it, and ``eps`` must be that budget's."""
        budget: dict[str, Any] = {"budget.eps": eps}
        if method in self.budgets:
            own = self.budgets[method]
            if abs(eps - own.eps) > 1e-12:
                raise InvalidInputError(f"sweep budgets.{method}: {method} is released at its own budget "
                                        f"{budget_label(own.eps, own.norm)} only, not eps {eps:g}")
            budget = {"budget.eps": own.eps, "budget.norm": own.norm}
        try:
            return load_protect_config(self.protect_preset, data=self.protect,
                                       overrides={"method": method, **budget, **(settings or {})})
        except InvalidInputError as error:
            where = f" ({settings_label(settings)})" if settings else ""
            section = "search.protect" if set(settings or {}) & set(self.search.protect) else "grid.protect"
            raise InvalidInputError(f"sweep {section}{where}: {error}") from None

    def evaluate_config(self, settings: dict[str, Any] | None = None) -> EvaluateConfig:
        """The sweep's evaluate config with evaluate-axis ``settings``."""
        data = to_dict(self.evaluate)
        for key, value in (settings or {}).items():
            set_dotted(data, key, value)
        try:
            return from_dict(EvaluateConfig, data, "evaluate")
        except InvalidInputError as error:
            section = "search.evaluate" if set(settings or {}) & set(self.search.evaluate) else "grid.evaluate"
            raise InvalidInputError(f"sweep {section} ({settings_label(settings or {})}): {error}") from None

    def releases(self) -> list[ReleaseSpec]:
        """Every distinct release of the grid, in a stable order: per method, each of its budgets
        (:meth:`method_eps`) × the protect points. A protect axis the method never reads (``beo.rounds`` for
        EM) neither appears in its settings nor makes another release. A spec's norm is its protect config's."""
        specs, seen = [], set()
        points = self.protect_points()
        for method in self.grid.method:
            for eps, settings in product(self.method_eps(method), points):
                config = self.protect_config(method, eps, settings)
                record = config.method_record()
                read = {key: value for key, value in settings.items() if _reads(record, key)}
                spec = ReleaseSpec(method, eps, read, config.budget.norm)
                if spec.label not in seen:
                    seen.add(spec.label)
                    specs.append(spec)
        return specs


def _read_budgets(budgets: Any) -> dict[str, Budget]:
    """SweepConfig.budgets as method → Budget, each checked (one-line errors naming ``budgets.METHOD``)."""
    if not isinstance(budgets, dict):
        raise InvalidInputError(f"sweep budgets: expected a mapping of method names to budgets, got {budgets!r}")
    read = {}
    for method, value in budgets.items():
        where = f"sweep budgets.{method}"
        if method not in METHODS:
            raise InvalidInputError(f"{where}: unknown method {method!r}; expected one of {', '.join(METHODS)}")
        if isinstance(value, dict) and not {"norm", "eps"} <= set(value):
            raise InvalidInputError(f"{where}: give both norm and eps (a method's budget is never implied), "
                                    f"got {value!r}")
        try:
            budget = value if isinstance(value, Budget) else read_value(Budget, value, where)
            require_norm(budget, method, METHOD_CLASSES[method].norms)
        except InvalidInputError as error:
            message = str(error)
            raise InvalidInputError(message if message.startswith(where) else f"{where}: {message}") from None
        read[method] = budget
    return read


def _reads(record: dict[str, Any], dotted_key: str) -> bool:
    """Whether the method record (ProtectConfig.method_record) holds ``dotted_key``."""
    node: Any = record
    for part in dotted_key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def sweep_names() -> list[str]:
    """Names of the shipped sweep files."""
    return sorted(p.name.removesuffix(".yaml") for p in resources.files("pipelines.sweeps").iterdir()
                  if p.name.endswith(".yaml"))


def load_sweep_config(name_or_file: str, overrides: dict[str, Any] | None = None) -> SweepConfig:
    """A shipped sweep (by name) or a sweep YAML file, then dotted-key overrides → SweepConfig."""
    path = resources.files("pipelines.sweeps") / f"{name_or_file}.yaml"
    data = read_yaml(str(path) if name_or_file in sweep_names() else name_or_file)
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    return from_dict(SweepConfig, data)
