"""Tests for the model registry: names, shapes, exact weight counts and mask-friendly layer types."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pemn.errors import PEMNError
from pemn.training.models import (
    ModelError,
    ViT,
    create_model,
    get_model_spec,
    list_models,
    model_at_width,
    register_model,
)

LISTED = [
    "convmixer-256-6",
    "convmixer-256-8",
    "convmixer-512-6",
    "convmixer-512-8",
    "vit-256-6",
    "vit-256-8",
    "vit-512-6",
    "vit-512-8",
    "resnet20",
    "resnet32",
    "resnet56",
    "resnet18",
    "resnet50",
    "mlp",
    "mlp-300-100",
    "lenet5",
    "tiny-cnn",
    "tiny-mlp",
    # narrow versions of the fixed-size families (any whole percent parses; these are the listed ones)
    "lenet5-w25",
    "lenet5-w50",
    "mlp-w25",
    "resnet20-w50",
]

# (in_channels, image_size, num_classes) of the datasets the CLI uses: digits, (fashion-)mnist, cifar100,
# imagefolder.
SHAPES = {
    "digits": (1, 8, 10),
    "mnist": (1, 28, 10),
    "cifar100": (3, 32, 100),
    "imagefolder": (3, 64, 7),
}

# Conv2d + Linear (+ MultiheadAttention in_proj) weight elements with 3x32x32 inputs and 10 classes, and the
# largest single layer. CIFAR ResNets use option-B projection shortcuts: paper's option-A count + 2,560
# (resnet32: 461,872 + 16*32 + 32*64).
WEIGHT_COUNTS = {
    "convmixer-256-6": (437_248, 65_536),
    "convmixer-256-8": (581_120, 65_536),
    "convmixer-512-6": (1_660_928, 262_144),
    "convmixer-512-8": (2_210_816, 262_144),
    "vit-256-6": (3_160_576, 196_608),
    "vit-256-8": (4_209_152, 196_608),
    "vit-512-6": (12_612_608, 786_432),
    "vit-512-8": (16_806_912, 786_432),
    "resnet20": (270_896, 36_864),
    "resnet32": (464_432, 36_864),
    "resnet56": (851_504, 36_864),
    "resnet18": (11_164_352, 2_359_296),
    "resnet50": (23_467_712, 2_359_296),
    "mlp": (854_528, 786_432),
    "mlp-300-100": (952_600, 921_600),
    "lenet5": (61_770, 48_000),
    "tiny-cnn": (476, 288),
    "tiny-mlp": (49_312, 49_152),
    # channels / units at width w: max(1, round half up(c * w / 100)); LeNet-5 at 25 %: 2/4 channels, 30/21 units
    "lenet5-w25": (4_190, 3_000),
    "lenet5-w50": (15_765, 12_000),
    "mlp-w25": (201_344, 196_608),
    "resnet20-w50": (67_992, 9_216),
}

MASKABLE = (nn.Conv2d, nn.Linear, nn.MultiheadAttention)


def layer_weights(model: nn.Module) -> list[int]:
    """Element counts of every maskable weight tensor (what the masking library replaces)."""
    sizes = []
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            sizes.append(m.weight.numel())
        elif isinstance(m, nn.MultiheadAttention):
            sizes.append(m.in_proj_weight.numel())  # out_proj is an nn.Linear, counted above
    return sizes


def test_list_models_is_sorted_and_complete() -> None:
    names = list_models()
    assert names == sorted([*LISTED, "gpt-128-4"])  # language models: tests/test_lm.py
    assert list_models("vit-*") == ["vit-256-6", "vit-256-8", "vit-512-6", "vit-512-8"]
    assert set(WEIGHT_COUNTS) == set(names) - {"gpt-128-4"}


@pytest.mark.parametrize("dataset", list(SHAPES))
@pytest.mark.parametrize("name", LISTED)
def test_forward_shape(name: str, dataset: str) -> None:
    in_ch, size, classes = SHAPES[dataset]
    torch.manual_seed(0)
    model = create_model(name, num_classes=classes, in_channels=in_ch, image_size=size).eval()
    with torch.no_grad():
        out = model(torch.randn(2, in_ch, size, size))
    assert out.shape == (2, classes)
    assert torch.isfinite(out).all()


def test_train_mode_backward_tiny() -> None:
    model = create_model("tiny-cnn", in_channels=1, image_size=8)
    out = model(torch.randn(2, 1, 8, 8))
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", LISTED)
def test_weight_counts(name: str) -> None:
    sizes = layer_weights(create_model(name))
    assert (sum(sizes), max(sizes)) == WEIGHT_COUNTS[name]


def test_convmixer_256_8_matches_paper_layout() -> None:
    model = create_model("convmixer-256-8", num_classes=10)
    sizes = layer_weights(model)
    assert sum(sizes) == 3072 + 8 * (6400 + 65536) + 2560 == 581_120
    assert max(sizes) == 65_536
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.bias is None for c in convs)
    assert convs[0].kernel_size == (2, 2) and convs[0].stride == (2, 2)
    assert convs[1].groups == 256 and convs[1].kernel_size == (5, 5)
    assert convs[2].kernel_size == (1, 1)
    head = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(head) == 1 and head[0].bias is None


def test_resnet32_projection_shortcuts_vs_paper_option_a() -> None:
    sizes = layer_weights(create_model("resnet32"))
    # option A (parameter-free shortcuts) would give the paper's 461,872; the two 1x1 projections add 2,560.
    assert sum(sizes) - (16 * 32 + 32 * 64) == 461_872
    assert max(sizes) == 64 * 64 * 9


def test_imagenet_resnet_stem_depends_on_image_size() -> None:
    small = create_model("resnet18", image_size=32)
    big = create_model("resnet18", image_size=64)
    assert small.stem[0].kernel_size == (3, 3) and not any(isinstance(m, nn.MaxPool2d) for m in small.stem)
    assert big.stem[0].kernel_size == (7, 7) and any(isinstance(m, nn.MaxPool2d) for m in big.stem)


def test_parsed_sizes() -> None:
    torch.manual_seed(0)
    model = create_model("convmixer-128-4", in_channels=1, image_size=8)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    pointwise = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    assert len(pointwise) == 4 and pointwise[0].weight.shape == (128, 128, 1, 1)
    spec = get_model_spec("ConvMixer-128-4")
    assert spec.pattern == "convmixer-<dim>-<depth>" and spec.sizes == {"dim": 128, "depth": 4}
    vit = create_model("vit-96-2", image_size=16)
    assert isinstance(vit, ViT) and vit(torch.randn(2, 3, 16, 16)).shape == (2, 10)
    assert vit.blocks[0].attn.num_heads == 1


def test_convmixer_kernel_and_patch_options() -> None:
    model = create_model("convmixer-64-2", kernel_size=9, patch_size=4)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs[0].kernel_size == (4, 4) and convs[1].kernel_size == (9, 9)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_vit_heads_and_mlp_ratio() -> None:
    vit = create_model("vit-256-6")
    block = vit.blocks[0]
    assert block.attn.num_heads == 4 and block.attn.batch_first
    assert block.mlp[0].out_features == 512
    assert vit.patch_embed.kernel_size == (4, 4) and vit.patch_embed.stride == (4, 4)
    assert vit.pos_embed.shape == (1, 65, 256)


def test_vit_rejects_indivisible_image_size() -> None:
    with pytest.raises(ValueError, match="divisible"):
        create_model("vit-256-6", image_size=30)


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError) as info:
        create_model("resnet-9000")
    assert isinstance(info.value, PEMNError)
    msg = str(info.value)
    assert "resnet-9000" in msg
    for name in LISTED:
        assert name in msg
    assert "convmixer-<dim>-<depth>" in msg and "vit-<hidden>-<depth>" in msg


@pytest.mark.parametrize("name", ["convmixer-0-8", "convmixer-256", "vit-256-6-2", "", "resnet44"])
def test_bad_names_rejected(name: str) -> None:
    with pytest.raises(ModelError):
        create_model(name)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_classes": 0},
        {"in_channels": -1},
        {"image_size": 0},
        {"num_classes": True},
        {"kernel_size": 3},  # resnet20 has no kernel_size option
    ],
)
def test_bad_arguments_rejected(kwargs: dict) -> None:
    with pytest.raises(ModelError):
        create_model("resnet20", **kwargs)


def test_register_model_rejects_duplicates_and_bad_listing() -> None:
    with pytest.raises(ModelError, match="already registered"):
        register_model("mlp")
    with pytest.raises(ModelError, match="does not match"):
        register_model("foo-<n>", listed=("bar-3",))


@pytest.mark.parametrize("name", LISTED)
def test_weights_only_in_maskable_modules(name: str) -> None:
    model = create_model(name, in_channels=1, image_size=8)
    for mod_name, module in model.named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            if p.dim() < 2:
                continue
            if isinstance(module, ViT):
                assert p_name in {"cls_token", "pos_embed"}
            else:
                assert isinstance(module, MASKABLE), f"{mod_name}.{p_name} lives in {type(module).__name__}"
    # every Linear is a plain nn.Linear (MHA's out_proj is torch's own NonDynamicallyQuantizableLinear)
    for mod_name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            assert type(module) is nn.Linear or mod_name.endswith("attn.out_proj")


@pytest.mark.parametrize("name", ["tiny-cnn", "resnet20", "vit-256-6", "convmixer-256-8", "lenet5"])
def test_construction_is_deterministic_under_global_seed(name: str) -> None:
    torch.manual_seed(123)
    a = create_model(name).state_dict()
    torch.manual_seed(123)
    b = create_model(name).state_dict()
    torch.manual_seed(124)
    c = create_model(name).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


def test_tiny_models_are_tiny() -> None:
    digits = {"in_channels": 1, "image_size": 8}
    for name in ("tiny-cnn", "tiny-mlp"):
        n = sum(p.numel() for p in create_model(name, **digits).parameters())
        assert 100 <= n <= 5_000, (name, n)


# ------------------------------------------------------------------------------------------------ widths


@pytest.mark.parametrize(("base", "full_width"), [
    ("lenet5", "lenet5-w100"), ("mlp", "mlp-w100"), ("resnet20", "resnet20-w100"), ("resnet32", "resnet32-w100"),
])
def test_full_width_is_the_classic_model(base: str, full_width: str) -> None:
    """``-w100`` builds the very same network, with the same initial weights under the same seed."""
    torch.manual_seed(3)
    a = create_model(base).state_dict()
    torch.manual_seed(3)
    b = create_model(full_width).state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(("name", "channels"), [
    ("lenet5-w50", [3, 8, 60, 42]),
    ("lenet5-w10", [1, 2, 12, 8]),  # never below one channel
    ("lenet5-w200", [12, 32, 240, 168]),
    ("resnet20-w25", [4, 4, 8, 16]),  # stem, then the first conv of each stage
    ("resnet18-w25", [16, 16, 32, 64, 128]),
    ("resnet50-w25", [16, 16, 32, 64, 128]),  # bottleneck planes (the expansion of 4 is kept)
    ("mlp-w50", [128, 128]),
])
def test_width_scales_every_hidden_layer(name: str, channels: list[int]) -> None:
    in_ch = 1 if name.startswith("lenet5") else 3
    model = create_model(name, num_classes=10, in_channels=in_ch, image_size=32)
    if name.startswith("lenet5"):
        got = [m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
               for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)][:-1]
    elif name.startswith("mlp"):
        got = [m.out_features for m in model.modules() if isinstance(m, nn.Linear)][:-1]
    else:
        got = [model.stem[0].out_channels] + [stage[0].conv1.out_channels for stage in model.layers]
    assert got == channels
    with torch.no_grad():
        assert model.eval()(torch.randn(2, in_ch, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(("name", "width", "expected"), [
    ("lenet5", 1, "lenet5"),
    ("lenet5", 0.5, "lenet5-w50"),
    ("lenet5", 0.25, "lenet5-w25"),
    ("lenet5-w50", 0.5, "lenet5-w25"),
    ("lenet5-w50", 2, "lenet5"),
    ("mlp", 0.25, "mlp-w25"),
    ("resnet20", 0.5, "resnet20-w50"),
    ("resnet50", 0.5, "resnet50-w50"),
    ("convmixer-64-4", 0.5, "convmixer-32-4"),
    ("convmixer-64-4", 0.25, "convmixer-16-4"),
    ("vit-256-6", 0.5, "vit-128-6"),
    ("gpt-128-4", 0.25, "gpt-32-4"),
    ("LeNet5", 0.5, "lenet5-w50"),
])
def test_model_at_width(name: str, width: float, expected: str) -> None:
    assert model_at_width(name, width) == expected
    get_model_spec(expected)  # the name parses


@pytest.mark.parametrize(("name", "width", "match"), [
    ("lenet5", 0.125, r"12\.5 % of lenet5's width; its width is a whole percent"),
    ("lenet5-w50", 0.015, "whole percent"),
    ("tiny-cnn", 0.5, "'tiny-cnn' has no width argument; families with one: .*lenet5-w<width>"),
    ("convmixer-64-4", 0.001, "no dim left"),
    ("lenet5", 0, "positive number"),
    ("lenet5", -1, "positive number"),
    ("lenet5", float("nan"), "positive number"),
    ("lenet5", True, "positive number"),
    ("nope", 0.5, "unknown model"),
])
def test_model_at_width_refuses(name: str, width: float, match: str) -> None:
    with pytest.raises(ModelError, match=match):
        model_at_width(name, width)


def test_width_is_a_name_field_not_an_option() -> None:
    with pytest.raises(ModelError, match="does not accept options"):
        create_model("lenet5", width=50)
    with pytest.raises(ModelError, match="unknown model"):
        create_model("lenet5-w0")
