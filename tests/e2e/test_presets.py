"""Every shipped preset runs, at a tiny scale, on a small dataset in its real format.

The paper-scale presets (ResNet-18 surrogate, ~100 rounds, full datasets) are for GPU clusters; here they
run with their own model, update rule and formats but 1 round of 1 epoch on a few dozen images.
"""

import numpy as np
import pytest
from PIL import Image

from pipelines.config import load_protect_config, preset_names
from pipelines.protect import protect
from ue_core.data import ImageDataset, ReleasedCIFAR10, ReleasedCIFAR100, read_dataset, write_cifar_batches
from ue_core.config import to_dict
from ue_core.data.dataset import balanced_subset
from ue_core.release import read_release, verify_release

# A 1-epoch ResNet-18 on a few dozen random images spreads them far apart: at the presets' σ = 0.3 every kernel
# weight underflows and the estimator refuses (bayes_error.check_support), so here σ follows the distances.
TINY = {"beo.rounds": 1, "beo.surrogate.epochs": 1, "beo.batch_size": 32, "beo.surrogate.batch_size": 16,
        "beo.estimator.bandwidth": "nearest-neighbour"}


def random_set(n: int, shape: tuple[int, int, int], classes: int, seed: int) -> ImageDataset:
    rng = np.random.default_rng(seed)
    return ImageDataset(rng.integers(0, 256, (n, *shape), dtype=np.uint8), np.arange(n) % classes, classes)


def write_tiny_imagenet(root, classes: int, per_class: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    wnids = [f"n{10_000_000 + c:08d}" for c in range(classes)]
    (root / "wnids.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    annotations = []
    for c, wnid in enumerate(wnids):
        (root / "train" / wnid / "images").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
                root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", format="JPEG")
        (root / "val" / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
            root / "val" / "images" / f"val_{c}.JPEG", format="JPEG")
        annotations.append(f"val_{c}.JPEG\t{wnid}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(annotations) + "\n")


def test_every_preset_is_covered_here():
    assert set(preset_names()) == {"fashion-mnist", "fashion-mnist-demo", "fashion-mnist-strong", "cifar10-paper",
                                   "cifar100-paper", "tiny-imagenet-paper"}


def test_the_demo_preset_is_the_strong_setting_with_a_wider_kernel_and_no_views():
    """The demo (scripts/demo.sh) runs the study's σ 3.0 setting (docs/study.md): the strong preset's setting
    without the crop/flip views, for 10 rounds instead of 20 — the rows its comment quotes."""
    demo, strong = (to_dict(load_protect_config(name)) for name in ("fashion-mnist-demo", "fashion-mnist-strong"))
    assert demo["beo"].pop("augment")["views"] == 0 and strong["beo"].pop("augment")["views"] == 4
    assert (demo["beo"].pop("rounds"), strong["beo"].pop("rounds")) == (10, 20)
    assert demo == strong


def test_fashion_mnist_strong_preset_at_tiny_scale(tmp_path, fashion_mnist_root):
    """The strongest measured setting (docs/study.md) on 60 real images, 2 rounds of 2 views."""
    config = load_protect_config("fashion-mnist-strong", overrides={
        "data.subset": 60, "data.test_subset": 0, "beo.rounds": 2, "beo.augment.views": 2})
    assert config.beo.surrogate.mode == "fixed" and config.beo.estimator.objective == "target"
    assert config.budget.eps == 16 / 255 and config.beo.estimator.sigma == 3.0
    protect(str(fashion_mnist_root), str(tmp_path / "release"), config, engine="reference", progress=False,
            tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}", experiment="presets")
    manifest = verify_release(tmp_path / "release")
    assert manifest["config"]["beo"]["augment"] == {"views": 2, "padding": 2, "flip": True}
    release = read_release(tmp_path / "release").sorted_by_index()
    clean = balanced_subset(read_dataset(str(fashion_mnist_root), split="train"), 60, seed=0).sorted_by_index()
    assert np.abs(release.images.astype(int) - clean.images.astype(int)).max() == 4  # two sign steps of 2/255


@pytest.mark.parametrize("preset, variant, classes", [("cifar10-paper", "cifar10", 10), ("cifar100-paper", "cifar100", 100)])
def test_cifar_paper_presets_at_tiny_scale(tmp_path, preset, variant, classes):
    write_cifar_batches(random_set(2 * classes, (32, 32, 3), classes, 0), tmp_path / "source",
                        test=random_set(classes, (32, 32, 3), classes, 1), variant=variant)
    config = load_protect_config(preset, overrides=TINY)
    assert config.beo.surrogate.model == "resnet18" and config.beo.pga.update == "adam"
    summary = protect(str(tmp_path / "source"), str(tmp_path / "release"), config, engine="reference",
                      progress=False, tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}", experiment="presets")
    manifest = verify_release(tmp_path / "release")
    assert summary.count == 2 * classes and manifest["formats"] == ["parquet", "png", "cifar"]
    loader = ReleasedCIFAR10 if variant == "cifar10" else ReleasedCIFAR100
    released = loader(str(tmp_path / "release" / "cifar"), train=True)
    assert len(released) == 2 * classes and released.data.shape == (2 * classes, 32, 32, 3)


def test_tiny_imagenet_preset_at_tiny_scale(tmp_path):
    write_tiny_imagenet(tmp_path / "source", classes=4, per_class=5, seed=0)
    config = load_protect_config("tiny-imagenet-paper", overrides=TINY)
    summary = protect(str(tmp_path / "source"), str(tmp_path / "release"), config, engine="reference",
                      progress=False, tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}", experiment="presets")
    manifest = verify_release(tmp_path / "release")
    assert summary.count == 20 and manifest["image_shape"] == [64, 64, 3]
