"""The model zoo: every architecture builds for 1 and 3 channels at 28, 32 and 64 px; features feed the head."""

import pytest
import torch

from ue_core.errors import InvalidInputError
from ue_core.models import MODEL_NAMES, Classifier, build_model

FEATURE_DIMS = {
    "resnet18": 512,
    "resnet34": 512,
    "vgg19": 512,
    "densenet121": 1024,
    "mobilenetv2": 1280,
    "small_cnn": 256,
}

# (in_channels, image_size, num_classes): both channel counts at every size, with varied class counts.
INPUT_SHAPES = [(1, 28, 10), (3, 28, 2), (1, 32, 1), (3, 32, 100), (1, 64, 7), (3, 64, 200)]


def test_model_names_are_the_zoo():
    assert set(MODEL_NAMES) == set(FEATURE_DIMS)


@pytest.mark.parametrize("in_channels, image_size, num_classes", INPUT_SHAPES)
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_builds_with_the_right_shapes(name, in_channels, image_size, num_classes):
    model = build_model(name, num_classes, in_channels=in_channels, image_size=image_size, seed=0).eval()
    x = torch.rand(2, in_channels, image_size, image_size)
    with torch.no_grad():
        features = model.features(x)
        logits = model(x)
    assert isinstance(model, Classifier)
    assert model.feature_dim == FEATURE_DIMS[name]
    assert model.num_classes == num_classes
    assert features.shape == (2, FEATURE_DIMS[name])
    assert logits.shape == (2, num_classes)
    assert torch.isfinite(logits).all()


# Side of the last feature map for a 32 px input: an ImageNet stem (7×7 stride 2 + max-pool) would give 1.
FINAL_MAP_SIZE_AT_32_PX = {
    "resnet18": 4,
    "resnet34": 4,
    "vgg19": 2,
    "densenet121": 4,
    "mobilenetv2": 4,
    "small_cnn": 4,
}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_small_image_stem_is_a_3x3_stride_1_conv_and_keeps_resolution(name):
    model = build_model(name, 10, in_channels=5).eval()
    first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.in_channels == 5
    assert first_conv.kernel_size == (3, 3) and first_conv.stride == (1, 1)
    global_pool = next(m for m in model.modules() if isinstance(m, torch.nn.AdaptiveAvgPool2d))
    seen = []
    global_pool.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape))
    with torch.no_grad():
        model(torch.rand(2, 5, 32, 32))
    assert seen[0][-2:] == (FINAL_MAP_SIZE_AT_32_PX[name],) * 2


def test_vgg19_keeps_a_spatial_map_at_28_px():
    # four max-pools (the fifth is dropped): 28 → 14 → 7 → 3 → 1
    model = build_model("vgg19", 10, in_channels=1, image_size=28)
    pools = [m for m in model.modules() if isinstance(m, torch.nn.MaxPool2d)]
    assert len(pools) == 4


def test_logits_are_the_head_of_the_features():
    model = build_model("small_cnn", 4, in_channels=3, width=8, seed=0)
    x = torch.rand(6, 3, 32, 32)
    for mode in (True, False):
        model.train(mode)
        torch.testing.assert_close(model(x), model.head(model.features(x)), rtol=0, atol=0)
    assert isinstance(model.head, torch.nn.Linear)
    assert model.head.in_features == model.feature_dim == 64


def test_small_cnn_is_small():
    model = build_model("small_cnn", 10, in_channels=3)
    parameters = sum(p.numel() for p in model.parameters())
    assert 0.3e6 < parameters < 0.5e6
    assert sum(p.numel() for p in build_model("small_cnn", 10, width=16).parameters()) < 0.1e6


def test_seed_fixes_the_initial_weights_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    first = build_model("small_cnn", 3, seed=7).state_dict()
    assert torch.equal(torch.rand(3), expected_draw)
    second = build_model("small_cnn", 3, seed=7).state_dict()
    other = build_model("small_cnn", 3, seed=8).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


@pytest.mark.parametrize(
    "arguments, named_input",
    [
        ({"name": "resnet50", "num_classes": 10}, "resnet50"),
        ({"name": "small_cnn", "num_classes": 10, "image_size": 27}, "image_size"),
        ({"name": "resnet18", "num_classes": 0}, "num_classes"),
        ({"name": "vgg19", "num_classes": -3}, "num_classes"),
        ({"name": "small_cnn", "num_classes": 10, "in_channels": 0}, "in_channels"),
        ({"name": "resnet18", "num_classes": 10, "width": 32}, "width"),
        ({"name": "small_cnn", "num_classes": 10, "width": 0}, "width"),
    ],
)
def test_bad_arguments_raise_a_one_line_error_naming_the_input(arguments, named_input):
    with pytest.raises(InvalidInputError) as error:
        build_model(**arguments)
    message = str(error.value)
    assert named_input in message and "\n" not in message


def test_unknown_model_name_lists_the_known_names():
    with pytest.raises(InvalidInputError, match="resnet18.*small_cnn"):
        build_model("alexnet", 10)
