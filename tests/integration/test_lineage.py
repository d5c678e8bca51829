"""A protect run keeps its final surrogate as an MLflow artifact that reproduces the release's β̂, unless told
not to (`--no-surrogate`), in a real MLflow sqlite store; tiny jobs on the reference engine (100 images, one
round, one epoch). The search from a release's digest to its runs is in test_evaluate.py, beside the runs."""

from pathlib import Path

import mlflow
import mlflow.store.tracking
import pytest
import torch

from pipelines.cli import main
from pipelines.config import load_protect_config
from pipelines.protect import protect
from pipelines.sources import load_training_set
from pipelines.tracking import DEFAULT_TRACKING_URI, is_node_local, tracking_uri
from ue_core.methods.beo import release_summary
from ue_core.models import build_model
from ue_core.release import read_manifest, read_release

TINY = {"data.subset": 100, "data.test_subset": 0, "beo.rounds": 1, "beo.surrogate.epochs": 1}


def test_the_surrogate_artifact_reproduces_the_bayes_error(fashion_mnist_root, tmp_path):
    store, out = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "release"
    config = load_protect_config("fashion-mnist", overrides=TINY)
    protect(str(fashion_mnist_root), str(out), config, engine="reference", progress=False, tracking_uri=store)
    manifest = read_manifest(out)
    path = mlflow.artifacts.download_artifacts(run_id=manifest["mlflow_run"], artifact_path="surrogate.pt",
                                               tracking_uri=store, dst_path=str(tmp_path))
    spec = torch.load(path, weights_only=True)
    model = build_model(spec["name"], spec["num_classes"], in_channels=spec["in_channels"],
                        image_size=spec["image_size"])
    model.load_state_dict(spec["state_dict"])
    clean = load_training_set(str(fashion_mnist_root), config)
    again = release_summary(model.eval(), clean, read_release(out), config.beo)
    assert set(again) == {"bayes_error_clean", "bayes_error_release"}
    assert again == pytest.approx({key: manifest["summary"][key] for key in again}, abs=1e-6)


def test_no_surrogate_leaves_it_out_and_experiment_names_the_experiment(fashion_mnist_root, tmp_path):
    store, out = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "release"
    settings = [argument for key, value in TINY.items() for argument in ("--set", f"{key}={value}")]
    code = main(["protect", "--preset", "fashion-mnist", "--source", str(fashion_mnist_root), "--out", str(out),
                 "--engine", "reference", "--no-progress", "--no-surrogate", "--tracking-uri", store,
                 "--experiment", "mine", *settings])
    assert code == 0
    client = mlflow.MlflowClient(store)
    run = client.get_run(read_manifest(out)["mlflow_run"])
    assert run.info.experiment_id == client.get_experiment_by_name("mine").experiment_id
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"manifest.json", "bayes_error.png", "images.png"}


def test_the_default_store_is_the_one_mlflow_ui_opens(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert DEFAULT_TRACKING_URI == mlflow.store.tracking.DEFAULT_TRACKING_URI == "sqlite:///mlflow.db"
    assert tracking_uri() == f"sqlite:///{Path('mlflow.db').resolve()}"  # absolute, for Ray workers


@pytest.mark.parametrize("uri, local", [
    (None, True), ("sqlite:////tmp/x.db", True), ("file:///tmp/mlruns", True), ("/tmp/mlruns", True),
    ("mlruns", True), ("http://mlflow:5000", False), ("postgresql://u@db/mlflow", False), ("databricks", False),
])
def test_node_local_stores(uri, local, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert is_node_local(uri) == local
