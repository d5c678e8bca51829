"""The bad-input table (docs/bad-inputs.md): every kind of input `ue` refuses, run through the real CLI.

Each case builds its bad input under ``src/`` in a fresh folder and runs `ue` as a user does (a subprocess,
an empty working directory, a sqlite MLflow store in the case's folder). Every case must end with exit
status 2, exactly one stderr line ``error: …`` naming the input, nothing at the destination (nor beside it:
no claim, no work folder), nothing in the working directory, and the bytes of every file under ``src/``
unchanged. Each case is its own process, forked from one interpreter that imported `ue` once
(forking_cli.py), so that the table costs seconds rather than an import of torch per case.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pytest

from ue_core.data import ImageDataset, write_png_folder
from ue_core.release import write_release

SRC, OUT = "{src}", "{out}"  # replaced by the case's source folder and destination
PROTECT = ("protect", "--preset", "fashion-mnist", "--engine", "reference", "--no-progress")
UNKNOWN_SCHEME = "foo://bucket/x"  # a scheme fsspec does not know
MISSING_PACKAGE = "gs://bucket/x"  # a scheme whose package (gcsfs) is not installed
MLFLOW_DOWN = "http://127.0.0.1:9"  # a closed port: the MLflow tracking server is down
S3_DOWN = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9",  # a closed port: the S3 server is down
           "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}


def dataset(n: int = 8) -> ImageDataset:
    """A tiny grayscale dataset of two classes."""
    rng = np.random.default_rng(0)
    return ImageDataset(images=rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8), labels=np.arange(n) % 2,
                        num_classes=2, class_names=("a", "b"), name="tiny")


def png_folder(src: Path) -> None:
    """``src`` is a valid PNG folder with labels.csv."""
    write_png_folder(dataset(), src)


def edit_labels(change: Callable[[list[str]], None]) -> Callable[[Path], None]:
    """A PNG folder whose labels.csv's last row is changed in place by ``change(row)``."""
    def build(src: Path) -> None:
        png_folder(src)
        lines = (src / "labels.csv").read_text().splitlines()
        row = lines[-1].split(",")
        change(row)
        lines[-1] = ",".join(row)
        (src / "labels.csv").write_text("\n".join(lines) + "\n")
    return build


def set_column(column: int, value: str) -> Callable[[Path], None]:
    """A PNG folder whose last labels.csv row has ``value`` in ``column`` (filename, index, label)."""
    return edit_labels(lambda row: row.__setitem__(column, value))


def truncated_image(src: Path) -> None:
    """A PNG folder one of whose images is cut in half."""
    png_folder(src)
    image = next((src / "images").glob("*.png"))
    image.write_bytes(image.read_bytes()[:40])


def mixed_sizes(src: Path) -> None:
    """A PNG folder one of whose images is 9x9 among 8x8 ones."""
    from PIL import Image

    png_folder(src)
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(next((src / "images").glob("*.png")))


def junk_folder(src: Path) -> None:
    """A folder that is no dataset layout."""
    src.mkdir()
    (src / "notes.txt").write_text("not a dataset")


def config_file(text: str) -> Callable[[Path], None]:
    """A valid PNG folder and ``src/config.yaml`` holding ``text``."""
    def build(src: Path) -> None:
        png_folder(src)
        (src / "config.yaml").write_text(text)
    return build


def release_pair(change: Callable[[ImageDataset], ImageDataset] = lambda d: d) -> Callable[[Path], None]:
    """``src/clean``, a PNG folder, and ``src/release``, a published release of ``change(clean)``."""
    def build(src: Path) -> None:
        png_folder(src / "clean")
        write_release(change(dataset()), src / "release", {"method": "test"})
    return build


def relabel(data: ImageDataset) -> ImageDataset:
    return replace(data, labels=(data.labels + 1) % data.num_classes)


def reindex(data: ImageDataset) -> ImageDataset:
    return replace(data, index=data.index + 10**6)


def tampered_release(change: Callable[[Path], None]) -> Callable[[Path], None]:
    """A published release (``src``) changed after publishing by ``change(src)``."""
    def build(src: Path) -> None:
        write_release(dataset(), src, {"method": "test"})
        change(src)
    return build


def flip_last_bytes(release: Path) -> None:
    shard = next((release / "parquet").glob("*.parquet"))
    shard.write_bytes(shard.read_bytes()[:-10] + b"0123456789")


def remove_shard(release: Path) -> None:
    next((release / "parquet").glob("*.parquet")).unlink()


def list_outside(release: Path) -> None:
    """The manifest lists a file outside the release (its checksum of no matter)."""
    manifest = json.loads((release / "manifest.json").read_text())
    manifest["files"]["../secret.parquet"] = manifest["files"].popitem()[1]
    (release / "manifest.json").write_text(json.dumps(manifest))


def break_manifest(release: Path) -> None:
    (release / "manifest.json").write_text("{not json")


def symlink_out(src: Path) -> None:
    """A valid PNG folder and ``src/link``, a symlink to a folder beside ``src`` (used as --out)."""
    png_folder(src)
    (src.parent / "elsewhere").mkdir()
    (src / "link").symlink_to(src.parent / "elsewhere")


@dataclass(frozen=True)
class Case:
    """One row of the table: the command line, how its bad input is built, what the one line must say."""

    id: str
    argv: tuple[str, ...]
    says: tuple[str, ...]
    build: Callable[[Path], None] = png_folder
    env: dict[str, str] = field(default_factory=dict)
    tracked: bool = False  # the job had started: its MLflow run records the failure; else no store is made


def protect(*extra: str, source: str = SRC, out: str = OUT) -> tuple[str, ...]:
    return (*PROTECT, "--source", source, "--out", out, *extra)


def evaluate(*extra: str, source: str = SRC, release: str = SRC, out: str = OUT) -> tuple[str, ...]:
    return ("evaluate", "--source", source, "--release", release, "--out", out, *extra)


def sweep(name: str = "fashion-mnist", *extra: str, source: str = SRC, out: str = OUT) -> tuple[str, ...]:
    return ("sweep", name, "--source", source, "--out", out, *extra)


CASES = [
    # ------------------------------------------------------------ protect: sources (paths, formats, labels)
    Case("protect missing source", protect(source=f"{SRC}/missing"), ("cannot read", f"{SRC}/missing")),
    Case("protect unknown layout", protect(), ("cannot recognise the dataset layout", SRC),
         build=junk_folder, tracked=True),
    Case("protect label out of range", protect(),
         (f"{SRC}/labels.csv", "labels out of range [0, 2)", "label 7"),
         build=set_column(2, "7"), tracked=True),
    Case("protect label not an integer", protect(), ("index and label must be integers", f"{SRC}/labels.csv"),
         build=set_column(2, "cat"), tracked=True),
    Case("protect duplicate index", protect(), (f"{SRC}/labels.csv", "index values must be unique"),
         build=set_column(1, "0"), tracked=True),
    Case("protect entry leaves the root", protect(),
         ("labels.csv entry '../../x.png' leaves the dataset root", SRC),
         build=set_column(0, "../../x.png"), tracked=True),
    Case("protect absolute entry", protect(), ("'/etc/passwd' is an absolute path", SRC),
         build=set_column(0, "/etc/passwd"), tracked=True),
    Case("protect truncated image", protect(), ("cannot decode image", f"{SRC}/images/"),
         build=truncated_image, tracked=True),
    Case("protect images of two sizes", protect(), ("image size 9x9 differs", f"{SRC}/images/"),
         build=mixed_sizes, tracked=True),
    Case("protect source of unknown scheme", protect(source=UNKNOWN_SCHEME), (UNKNOWN_SCHEME,)),
    Case("protect source on an unreachable S3", protect(source="s3://bucket/src"),
         ("cannot read s3://bucket/src: the S3 endpoint is unreachable",), env=S3_DOWN),
    # --------------------------------------------------------------------------- protect: configs, outputs
    Case("protect eps out of range", protect("--eps", "1.5"), ("eps must be in (0, 1)", "got 1.5")),
    Case("protect eps zero", protect("--eps", "0"), ("eps must be in (0, 1)", "got 0.0")),
    Case("protect value of the wrong type", protect("--set", "beo.batch_size=abc"),
         ("config.beo.batch_size", "expected an integer", "'abc'")),
    Case("protect unknown key", protect("--set", "budget.nrom=l2"), ("unknown key config.budget.nrom",)),
    Case("protect one setting twice", protect("--set", "beo.pga.eps=16/255", "--eps", "8/255"),
         ("config beo.pga.eps and budget.eps are one setting",)),
    Case("protect unknown surrogate", protect("--set", "beo.surrogate.model=alexnet"),
         ("unknown surrogate model 'alexnet'",)),
    Case("protect unknown preset", protect("--preset", "cifar11"), ("unknown preset 'cifar11'",)),
    Case("protect delta needs a small eps", protect("--eps", "128/255", "--set", "formats=[parquet,delta]"),
         ("int8, so it needs eps <= 127/255",)),
    Case("protect unknown method", protect("--method", "no-such-method"),
         ("unknown method 'no-such-method'; expected one of beo",)),
    Case("protect em with an L2 budget", protect("--method", "em", "--set", "budget.norm=l2", "--eps", "0.5"),
         ("em: defined for the budget norm linf only",)),
    Case("protect ops with an L∞ budget", protect("--method", "ops"),
         ("ops: defined for the budget norm l0 only, got norm 'linf'",)),
    Case("protect ar with an L0 budget", protect("--method", "ar", "--set", "budget.norm=l0", "--eps", "1"),
         ("ar: defined for the budget norm l2 or linf only, got norm 'l0'",)),
    Case("protect lsp with an L∞ budget", protect("--method", "lsp"),
         ("lsp: defined for the budget norm l2 only, got norm 'linf'",)),
    Case("protect tap steps zero", protect("--method", "tap", "--set", "tap.steps=0"),
         ("tap steps: must be >= 1",)),
    Case("protect config file missing", protect("--config", f"{SRC}/none.yaml"), (f"{SRC}/none.yaml",)),
    Case("protect config file not YAML", protect("--config", f"{SRC}/config.yaml"),
         (f"{SRC}/config.yaml", "is not valid YAML"), build=config_file("beo: [unclosed\n")),
    Case("protect config file unknown key", protect("--config", f"{SRC}/config.yaml"),
         ("unknown key config.beo.round",), build=config_file("beo:\n  round: 2\n")),
    Case("protect over an existing release", protect(source=f"{SRC}/clean", out=f"{SRC}/release"),
         (f"{SRC}/release", "--overwrite"), build=release_pair()),
    Case("protect out is a symlink", protect(out=f"{SRC}/link"),
         ("output is a symbolic link", f"{SRC}/link"), build=symlink_out),
    Case("protect out of a missing package", protect(out=MISSING_PACKAGE), (MISSING_PACKAGE,)),
    Case("protect out on an unreachable S3", protect(out="s3://bucket/out"),
         ("cannot write s3://bucket/out: the S3 endpoint is unreachable",), env=S3_DOWN),
    Case("protect tracking server unreachable", protect("--tracking-uri", MLFLOW_DOWN),
         (f"cannot reach the MLflow tracking server at {MLFLOW_DOWN}",)),
    # ------------------------------------------------------------------------------------------ evaluate
    Case("evaluate ratio above 1", evaluate("--ratio", "1.5"), ("mixing ratio must be in [0, 1], got 1.5",)),
    Case("evaluate ratio below 0", evaluate("--ratio", "-0.1"),
         ("mixing ratio must be in [0, 1], got -0.1",)),
    Case("evaluate unknown victim", evaluate("--victim", "alexnet"), ("unknown victim 'alexnet'",)),
    Case("evaluate unknown defence", evaluate("--defence", "grayscale+blur"),
         ("'grayscale+blur': unknown 'blur'",)),
    Case("evaluate exclusive defences", evaluate("--defence", "mixup+cutmix"),
         ("mixup and cutmix exclude each other",)),
    Case("evaluate unknown ueraser setting",
         evaluate("--defence", "ueraser", "--set", "defence.ueraser.setting=fast"),
         ("defence ueraser.setting: unknown 'fast'; known: lite, standard, max",)),
    Case("evaluate zero epochs", evaluate("--epochs", "0"), ("epochs: must be >= 1, got 0",)),
    Case("evaluate relabelled release", evaluate(source=f"{SRC}/clean", release=f"{SRC}/release"),
         ("8 indices have different clean and protected labels",), build=release_pair(relabel)),
    Case("evaluate release of another dataset", evaluate(source=f"{SRC}/clean", release=f"{SRC}/release"),
         ("8 indices that are not in the clean source", f"{SRC}/release"), build=release_pair(reindex)),
    Case("evaluate release without manifest", evaluate(source=f"{SRC}/clean", release=f"{SRC}/clean"),
         ("no manifest.json", f"{SRC}/clean"), build=release_pair()),
    Case("evaluate missing release", evaluate(release=f"{SRC}/missing"), ("cannot read", f"{SRC}/missing")),
    Case("evaluate over existing results",
         evaluate(source=f"{SRC}/clean", release=f"{SRC}/release", out=f"{SRC}/clean"),
         (f"{SRC}/clean", "--overwrite"), build=release_pair()),
    Case("evaluate source of unknown scheme", evaluate(source=UNKNOWN_SCHEME), (UNKNOWN_SCHEME,)),
    Case("evaluate release of unknown scheme", evaluate(release=UNKNOWN_SCHEME), (UNKNOWN_SCHEME,)),
    Case("evaluate out of unknown scheme", evaluate(out=UNKNOWN_SCHEME), (UNKNOWN_SCHEME,)),
    Case("evaluate storage of a missing package", evaluate("--storage", MISSING_PACKAGE), (MISSING_PACKAGE,)),
    Case("evaluate tracking server unreachable", evaluate("--tracking-uri", MLFLOW_DOWN),
         (f"cannot reach the MLflow tracking server at {MLFLOW_DOWN}",)),
    # --------------------------------------------------------------------------------------------- sweep
    Case("sweep unknown name", sweep("fashion-mnst"), ("cannot read config fashion-mnst",)),
    Case("sweep file not YAML", sweep(f"{SRC}/config.yaml"), (f"{SRC}/config.yaml", "is not valid YAML"),
         build=config_file("grid: [unclosed\n")),
    Case("sweep ratio out of range", sweep("fashion-mnist", "--set", "grid.ratio=[2]"),
         ("sweep grid.ratio: mixing ratio must be in [0, 1], got 2.0",)),
    Case("sweep unknown search space", sweep("fashion-mnist", "--set", "search.samples=2", "--set", "search.mode=min",
                                             "--set", "search.protect.beo.estimator.sigma={logunifrom: [0.3, 10]}"),
         ("sweep search.protect.beo.estimator.sigma.logunifrom: expected one search space (uniform:",)),
    Case("sweep source of unknown scheme", sweep(source=UNKNOWN_SCHEME), (UNKNOWN_SCHEME,)),
    Case("sweep out of unknown scheme", sweep(out=UNKNOWN_SCHEME), (UNKNOWN_SCHEME,)),
    Case("sweep releases of unknown scheme", sweep("fashion-mnist", "--releases", UNKNOWN_SCHEME),
         (UNKNOWN_SCHEME,)),
    Case("sweep tracking server unreachable", sweep("fashion-mnist", "--tracking-uri", MLFLOW_DOWN),
         (f"cannot reach the MLflow tracking server at {MLFLOW_DOWN}",)),
    # ------------------------------------------------------------ verify: releases tampered after publishing
    Case("verify modified file", ("verify", SRC), (f"release {SRC}: parquet/", "does not match its sha256"),
         build=tampered_release(flip_last_bytes)),
    Case("verify missing file", ("verify", SRC), (f"release {SRC} is missing parquet/",),
         build=tampered_release(remove_shard)),
    Case("verify entry outside the release", ("verify", SRC),
         ("manifest.json entry '../secret.parquet' leaves",),
         build=tampered_release(list_outside)),
    Case("verify manifest not JSON", ("verify", SRC), (f"{SRC}/manifest.json is not valid JSON",),
         build=tampered_release(break_manifest)),
    Case("verify no release", ("verify", SRC), ("no manifest.json", SRC)),
    Case("verify unknown scheme", ("verify", UNKNOWN_SCHEME), (UNKNOWN_SCHEME,)),
    Case("verify missing package", ("verify", MISSING_PACKAGE), (MISSING_PACKAGE,)),
    # ------------------------------------------------------------------------------------- fetch (URIs)
    Case("fetch root of unknown scheme", ("fetch", "fashion-mnist", "--root", UNKNOWN_SCHEME),
         (UNKNOWN_SCHEME,)),
    Case("fetch root of a missing package", ("fetch", "fashion-mnist", "--root", MISSING_PACKAGE),
         (MISSING_PACKAGE,)),
    # -------------------------------------------------------------------------------------------- submit
    Case("submit credential in env", ("submit", "--env", "AWS_SECRET_ACCESS_KEY=abc", "--", "presets"),
         ("--env AWS_SECRET_ACCESS_KEY: credentials are not sent",)),
    Case("submit token in env", ("submit", "--env", "MY_TOKEN=abc", "--", "presets"),
         ("--env MY_TOKEN: credentials are not sent",)),
    Case("submit env without value", ("submit", "--env", "NOVALUE", "--", "presets"),
         ("--env takes KEY=VALUE, got 'NOVALUE'",)),
    Case("submit nothing", ("submit",), ("nothing to submit",)),
    Case("submit unreachable cluster", ("submit", "--address", "http://127.0.0.1:9", "--", "presets"),
         ("cannot reach the Ray job API at http://127.0.0.1:9",)),
]


def fill(text: str, src: Path, out: Path) -> str:
    return text.replace(SRC, str(src)).replace(OUT, str(out))


def digests(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (symlinks as their target's text)."""
    def digest(path: Path) -> str:
        return os.readlink(path) if path.is_symlink() else hashlib.sha256(path.read_bytes()).hexdigest()

    files = [p for p in sorted(root.rglob("*")) if p.is_file() or p.is_symlink()]
    return {str(p.relative_to(root)): digest(p) for p in files}


@dataclass
class Outcome:
    """What a case's run left: exit status, stderr, the source's digests before and after, its folder."""

    returncode: int
    stderr: str
    before: dict[str, str]
    after: dict[str, str]
    folder: Path


def prepare(case: Case, folder: Path) -> dict:
    """Build the case's input in ``folder/src``; its job for forking_cli.py (run from an empty ``cwd``)."""
    case.build(folder / "src")
    (folder / "dest").mkdir()
    (folder / "cwd").mkdir()
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlruns.db'}", **case.env}
    argv = [fill(a, folder / "src", folder / "dest" / "out") for a in case.argv]
    return {"argv": argv, "cwd": str(folder / "cwd"), "env": env, "stdout": str(folder / "stdout"),
            "stderr": str(folder / "stderr")}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, Outcome]:
    """Every case run once, as forks of one interpreter that imported `ue` (forking_cli.py), two at a time."""
    folders = {case.id: tmp_path_factory.mktemp("case") for case in CASES}
    jobs = [prepare(case, folders[case.id]) for case in CASES]
    before = {name: digests(folder / "src") for name, folder in folders.items()}
    ran = subprocess.run([sys.executable, str(Path(__file__).with_name("forking_cli.py")), "2"],
                         input=json.dumps(jobs), capture_output=True, text=True, timeout=600, check=True)
    codes = json.loads(ran.stdout.splitlines()[-1])
    return {name: Outcome(code, (folder / "stderr").read_text(), before[name], digests(folder / "src"),
                          folder) for (name, folder), code in zip(folders.items(), codes, strict=True)}


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_a_bad_input_is_one_line_and_changes_nothing(case: Case, outcomes: dict[str, Outcome]):
    outcome = outcomes[case.id]
    assert outcome.returncode == 2, outcome.stderr[-3000:]
    lines = outcome.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), outcome.stderr[-3000:]
    for text in case.says:
        assert fill(text, outcome.folder / "src", outcome.folder / "dest" / "out") in lines[0], lines[0]
    assert list((outcome.folder / "dest").iterdir()) == []  # no output, no claim, no work folder
    assert list((outcome.folder / "cwd").iterdir()) == []  # no `foo:` folder, no ./mlflow.db
    assert (outcome.folder / "mlruns.db").exists() == case.tracked
    assert outcome.after == outcome.before


def test_the_docs_list_every_case():
    """docs/bad-inputs.md has a row for every case (command, input)."""
    table = (Path(__file__).parents[2] / "docs" / "bad-inputs.md").read_text()
    for case in CASES:
        command, _, kind = case.id.partition(" ")
        assert f"| `ue {command}` | {kind}" in table, case.id
