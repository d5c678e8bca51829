"""bench/gpu_check.py: its help, and a CPU dry run that writes the JSON a GPU run would, importing no Ray,
MLflow or pipelines/ (the lent GPU machine has none of them)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}

DRY_RUN = """
import json, runpy, sys
main = runpy.run_path("bench/gpu_check.py")["main"]
status = main(sys.argv[1:])
print(json.dumps({"status": status, "imported": sorted({"ray", "mlflow", "pipelines"} & set(sys.modules))}))
"""


def test_help_runs():
    result = subprocess.run([sys.executable, "bench/gpu_check.py", "--help"], cwd=ROOT, env=ENV,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "--device" in result.stdout and "--fashion-mnist" in result.stdout


def test_a_cpu_dry_run_writes_timings_and_passes_its_consistency_check(tmp_path, fashion_mnist_root):
    out = tmp_path / "gpu_check.json"
    arguments = ["--device", "cpu", "--size", "512", "--models", "small_cnn", "--fast-models", "small_cnn",
                 "--consistency-size", "128",
                 "--fashion-mnist", str(fashion_mnist_root / "FashionMNIST" / "raw"), "--out", str(out)]
    result = subprocess.run([sys.executable, "-c", DRY_RUN, *arguments], cwd=ROOT, env=ENV,
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    ran = json.loads(result.stdout.strip().splitlines()[-1])
    assert ran == {"status": 0, "imported": []}
    report = json.loads(out.read_text())
    assert report["device"] == "cpu"
    assert [(t["dataset"], t["model"], t["compute"], t["images"]) for t in report["timings"]] == [
        (name, "small_cnn", compute, 512) for name in ("fashion-mnist", "synthetic-cifar")
        for compute in ("float32", "channels_last+bf16")]
    for timing in report["timings"]:
        assert set(timing["seconds"]) == {"surrogate", "features", "estimator", "ascent"}
        assert all(v > 0 for v in timing["images_per_second"].values()) and timing["peak_memory_gib"] == 0.0
    assert [c["passed"] for c in report["consistency"]] == [True, True]
    assert all(c["max_beta_difference"] == 0.0 for c in report["consistency"])  # CPU against itself: exact
