"""Fixtures shared by every test directory."""

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# No Ray starts by itself in a test process (read by Ray at import, so set before any test module imports it).
# Ray Data's prefetch threads outlive an iterator left early (a test that checks a refused state) and, once the
# module's ray.shutdown() ran, their next Ray call would start a new local Ray from that thread: Ray
# fate-shares its GCS and raylet with the thread that started them, so they die with it, and the next test
# module of that pytest worker, which finds Ray initialised, loses its cluster and the worker dies with it.
os.environ["RAY_ENABLE_AUTO_CONNECT"] = "0"


def pytest_configure(config: pytest.Config) -> None:
    """Before pytest-xdist's workers start (scripts/test.sh runs two): make sure Ray's authentication token
    exists. Ray writes ~/.ray/auth_token at the first ``ray.init`` when none exists, and two workers starting
    their first Ray at once could each write one, leaving a cluster whose token is not the file's."""
    if hasattr(config, "workerinput"):  # an xdist worker: the controller did it
        return
    ray = Path(sys.executable).with_name("ray")
    if ray.exists() and not (Path.home() / ".ray" / "auth_token").exists():
        subprocess.run([str(ray), "get-auth-token", "--generate"], capture_output=True, check=True, timeout=120)


@pytest.fixture(scope="session")
def fashion_mnist_root() -> Path:
    """A directory whose FashionMNIST/raw holds the real Fashion-MNIST (fetched once if missing).

    The location is $UE_DATA_DIR if set, else the repository's gitignored data/ directory.
    """
    from ue_core.data import fetch_fashion_mnist

    return fetch_fashion_mnist(Path(os.environ.get("UE_DATA_DIR", REPO_ROOT / "data")))


@pytest.fixture
def mlflow_global_store() -> Iterator[Callable[[str], None]]:
    """``mlflow.set_tracking_uri`` for one test, undone afterwards.

    A few tests must point MLflow's *global* tracking URI at their store (``mlflow.get_run``, and
    ``MlflowClient.load_table``, which searches the global store rather than its client's). That call also
    exports MLFLOW_TRACKING_URI, and both would reach every later test of the same pytest worker (a dry run's
    report then named another test's store).
    """
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield mlflow.set_tracking_uri
    mlflow.set_tracking_uri(None)  # clears the global URI and the variable it exported
    if before is not None:
        os.environ["MLFLOW_TRACKING_URI"] = before
