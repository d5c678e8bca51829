"""`ue evaluate` with the UEraser defence on a real local Ray, on real Fashion-MNIST: the victim trains with the
defence and learns, and the Ray worker's weights are ue_core's fit with the same defence (pipelines/ calls
ue_core's loss, it does not re-implement it). And a sweep takes the defence and its setting as axes."""

import pytest
import ray
import torch

from pipelines.config import load_evaluate_config, load_protect_config
from pipelines.config.sweep import load_sweep_config
from pipelines.evaluate import evaluate_release
from pipelines.protect import protect
from pipelines.sweep import plan_trials
from pipelines.victims import Scaling
from ue_core.defences import training_loss
from ue_core.errors import InvalidInputError
from ue_core.release import read_release
from ue_core.training import fit


@pytest.fixture(scope="module", autouse=True)
def shutdown_ray_afterwards():
    """The job starts a local Ray in this process; later modules start their own."""
    yield
    ray.shutdown()


@pytest.mark.slow
def test_evaluate_with_ueraser_learns_and_runs_ue_core_fit(fashion_mnist_root, tmp_path):
    """A 600-image release of ±8/255 random noise (cheap to make, and no obstacle to learning), its
    poison-only victim (a small CNN, 3 epochs, the standard setting with K = 3: the first epoch on the largest
    of 3 losses, then one augmented copy)."""
    store = f"sqlite:///{tmp_path / 'mlruns.db'}"
    release = tmp_path / "release"
    protect(str(fashion_mnist_root), str(release), load_protect_config("fashion-mnist", overrides={
        "method": "random", "data.subset": 600, "data.test_subset": 0,
    }), engine="reference", progress=False, tracking_uri=store)
    config = load_evaluate_config(overrides={
        "modes": ["poison-only"], "test_subset": 400, "seed": 2,
        "defence.names": "ueraser", "defence.ueraser.setting": "standard", "defence.ueraser.repeats": 3,
        "victim.model": "small_cnn", "victim.width": 16, "victim.epochs": 3, "victim.batch_size": 32,
        "victim.lr": 0.05,
    })
    assert config.defence.ueraser.leading_epochs(3) == 1
    out = tmp_path / "results"
    (row,) = evaluate_release(str(fashion_mnist_root), str(release), str(out), config, tracking_uri=store,
                              progress=False).rows
    assert row.mode == "poison-only" and row.train_images == 600
    assert row.final_test_accuracy > 0.4, row  # chance is 0.1

    released = read_release(release).sorted_by_index()
    x, y = released.tensors()
    reference = config.victim.build(released.num_classes, released.image_shape, seed=config.seed)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(Scaling.for_victim(1).threads)
    try:
        fit(reference, x, y, config.victim.to_recipe(1), seed=config.seed,
            training_loss=training_loss(config.defence, config.victim.epochs))
    finally:
        torch.set_num_threads(previous_threads)
    trained = torch.load(out / row.model, weights_only=True)
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(trained[name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_a_sweep_takes_the_defence_and_its_setting_as_axes():
    config = load_sweep_config("fashion-mnist", {
        "grid.eps": ["8/255"], "grid.ratio": [1.0], "grid.defence": ["none", "ueraser"],
        "grid.evaluate": {"defence.ueraser.setting": ["lite", "max"]},
    })
    trials = [t for t in plan_trials(config) if t.defence == "ueraser"]
    assert [t.evaluation for t in trials] == ["defence.ueraser.setting=lite", "defence.ueraser.setting=max"]
    settings = [config.evaluate_config(point).defence.ueraser.setting for point in config.grid.evaluate_points()]
    assert settings == ["lite", "max"]
    with pytest.raises(InvalidInputError, match="defence ueraser.setting: unknown 'fast'"):
        load_sweep_config("fashion-mnist", {"grid.evaluate": {"defence.ueraser.setting": ["fast"]}})
