"""The layout's promises, checked on the source: one source of truth per BEO step, no import cycle under
pipelines/, and ue_core free of the distributed stack."""

from __future__ import annotations

import ast
from pathlib import Path

import pipelines.ray_engine.engine
import pipelines.ray_engine.estimator
import pipelines.ray_engine.passes
import pipelines.ray_engine.rounds
import pipelines.ray_engine.trainer
from ue_core.methods import base, beo

ROOT = Path(__file__).resolve().parents[2]


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_the_ray_engine_calls_the_reference_step_functions_themselves():
    """Each BEO step is one ue_core function: the Ray engine's modules hold the very same objects, so the two
    engines cannot compute the round seed, the estimator, the pixel update or the finish differently."""
    assert pipelines.ray_engine.trainer.round_seed is beo.round_seed
    assert pipelines.ray_engine.trainer.train_surrogate is beo.train_surrogate
    assert pipelines.ray_engine.rounds.normalise_with_anchors is beo.normalise_with_anchors
    assert pipelines.ray_engine.estimator.exact_stats is beo.exact_stats
    assert pipelines.ray_engine.estimator.exact_gradient is beo.exact_gradient
    assert pipelines.ray_engine.estimator.estimate_step is beo.estimate_step
    assert pipelines.ray_engine.passes.pixel_step is beo.pixel_step
    assert pipelines.ray_engine.engine.release_summary_of_batches is beo.release_summary_of_batches
    assert pipelines.ray_engine.engine.release_of is base.release_of


def test_pipelines_reimplement_no_step():
    """pipelines/ calls the step functions, never the lower-level maths they are made of."""
    lower_level = ("block_stats", "block_gradient", "ascent_step", "feature_vjp", "100_003")
    for path in sorted((ROOT / "pipelines").rglob("*.py")):
        text = path.read_text()
        used = [name for name in lower_level if name in text]
        assert not used, f"{path.relative_to(ROOT)} uses {used}: call ue_core.methods.beo's step functions"


def test_no_import_cycle_under_pipelines():
    files = {module_name(p): p for p in (ROOT / "pipelines").rglob("*.py")}
    graph = {name: {m for m in imports_of(path) if m in files and m != name} for name, path in files.items()}
    for name, imported in graph.items():  # a package's __init__ imports its own modules: not a cycle
        graph[name] = {m for m in imported if not m.startswith(f"{name}.")}

    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return [*path, start]
                if nxt not in path:
                    stack.append((nxt, [*path, nxt]))
        return None

    for name in graph:
        cycle = cycle_from(name)
        assert cycle is None, "import cycle: " + " → ".join(cycle)


def test_ue_core_never_imports_the_distributed_stack():
    for path in sorted((ROOT / "ue_core").rglob("*.py")):
        forbidden = {m.split(".")[0] for m in imports_of(path)} & {"ray", "mlflow", "s3fs", "pipelines"}
        assert not forbidden, f"{path.relative_to(ROOT)} imports {sorted(forbidden)}"
