"""A small timm-style registry of plain PyTorch models used by the PEMN experiments.

Every weight lives in a standard ``nn.Conv2d``, ``nn.Linear`` or ``nn.MultiheadAttention`` (plus BatchNorm /
LayerNorm affine vectors and ViT's class token / position embedding), because the masking converter finds the
layers to mask by those exact module types. No functional weights, no custom Linear subclasses.

Names encode the size and are parsed, e.g. ``convmixer-256-8`` (dim 256, depth 8) or ``vit-512-6`` (hidden
512, depth 6); the fixed-size families take their width as a whole percent of the classic one, e.g. ``lenet5-w50``
(half as many channels and units in every layer), ``resnet20-w25``, ``mlp-w25`` (:func:`model_at_width` gives the
name of any family at another width). A file records the name, so a narrow model rebuilds from the file alone.
Construction only uses torch's global RNG, so ``torch.manual_seed(s)`` before :func:`create_model` reproduces the
same initial weights.
"""

from __future__ import annotations

import fnmatch
import inspect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import nn

from pemn.errors import PEMNError

__all__ = [
    "ConvMixer",
    "LeNet5",
    "ModelError",
    "ModelSpec",
    "ResNet",
    "ViT",
    "create_model",
    "get_model_spec",
    "list_model_families",
    "list_models",
    "model_at_width",
    "register_model",
]

Builder = Callable[..., nn.Module]
B = TypeVar("B", bound=Builder)

_FIELD_RE = re.compile(r"<([a-z_][a-z0-9_]*)>")


class ModelError(PEMNError, ValueError):
    """A model name is unknown or its size / options cannot build a working model."""


@dataclass(frozen=True)
class _Entry:
    pattern: str
    regex: re.Pattern[str]
    fields: tuple[str, ...]
    builder: Builder
    listed: tuple[str, ...]
    serves: str


@dataclass(frozen=True)
class ModelSpec:
    """What a model name resolves to: the registered pattern and the sizes parsed out of the name."""

    name: str
    pattern: str
    sizes: dict[str, int] = field(default_factory=dict)
    builder: Builder | None = field(default=None, repr=False, compare=False)
    #: the workload the model serves (:data:`pemn.training.workloads.WORKLOADS`' key, its files' app kind)
    serves: str = "image-classifier"


_REGISTRY: dict[str, _Entry] = {}


def register_model(name_or_pattern: str, *, listed: Sequence[str] = (), serves: str = "image-classifier"
                   ) -> Callable[[B], B]:
    """Register a builder under an exact name or a pattern such as ``"convmixer-<dim>-<depth>"``.

    Each ``<field>`` matches a positive integer that is passed to the builder as a keyword argument, so new
    sizes need no new registration. ``listed`` names the sizes :func:`list_models` advertises for a pattern
    (an exact name is always listed). Builders take ``num_classes``, ``in_channels`` and ``image_size``
    keywords plus any family options. ``serves`` names the workload the model serves
    (:data:`pemn.training.workloads.WORKLOADS`: ``image-classifier`` or ``char-lm``).
    """
    key = name_or_pattern.strip().lower()
    if not key:
        raise ModelError("model name must not be empty")
    if key in _REGISTRY:
        raise ModelError(f"model {key!r} is already registered")
    fields = tuple(_FIELD_RE.findall(key))
    parts = _FIELD_RE.split(key)
    # re.split with one group alternates literal, field, literal, ...
    regex_src = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>[1-9][0-9]*)" for i, p in enumerate(parts))
    regex = re.compile(f"^{regex_src}$")
    names = (key,) if not fields else tuple(n.lower() for n in listed)
    for n in names:
        if not regex.match(n):
            raise ModelError(f"listed name {n!r} does not match pattern {key!r}")

    def decorator(builder: B) -> B:
        _REGISTRY[key] = _Entry(key, regex, fields, builder, names, serves)
        return builder

    return decorator


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted canonical model names, optionally filtered by a shell-style ``pattern`` (e.g. ``"vit-*"``).

    Only the common sizes are listed; any other ``convmixer-<dim>-<depth>`` or ``vit-<hidden>-<depth>``
    with positive integers parses as well.
    """
    names = sorted({n for e in _REGISTRY.values() for n in e.listed})
    if pattern is not None:
        names = [n for n in names if fnmatch.fnmatchcase(n, pattern.lower())]
    return names


def list_model_families(pattern: str | None = None) -> list[str]:
    """The sized families (``convmixer-<dim>-<depth>`` ...) that any positive sizes instantiate, optionally
    those a shell-style ``pattern`` matches (``"vit-*"`` matches ``vit-<hidden>-<depth>``)."""
    families = sorted(k for k, e in _REGISTRY.items() if e.fields)
    if pattern is not None:
        families = [f for f in families if fnmatch.fnmatchcase(f, pattern.lower())]
    return families


def _valid_names_message() -> str:
    patterns = sorted(k for k, e in _REGISTRY.items() if e.fields)
    return f"valid names: {', '.join(list_models())}; sized families: {', '.join(patterns)}"


def get_model_spec(name: str) -> ModelSpec:
    """Resolve ``name`` to its registry entry and parsed sizes; raises :class:`ModelError` if unknown."""
    if not isinstance(name, str):
        raise ModelError(f"model name must be a string, got {type(name).__name__}")
    key = name.strip().lower()
    entry = _REGISTRY.get(key)
    if entry is not None and not entry.fields:
        return ModelSpec(key, entry.pattern, {}, entry.builder, entry.serves)
    for entry in _REGISTRY.values():
        if entry.fields:
            m = entry.regex.match(key)
            if m:
                sizes = {f: int(m.group(f)) for f in entry.fields}
                return ModelSpec(key, entry.pattern, sizes, entry.builder, entry.serves)
    raise ModelError(f"unknown model {name!r}; {_valid_names_message()}")


def _check_positive(label: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelError(f"{label} must be a positive int, got {value!r}")


def scaled(base: int, width: int) -> int:
    """``base`` channels (or units) at ``width`` percent of them, rounded half up, at least 1."""
    return max(1, (base * width + 50) // 100)


#: The fields that set the width of the families sized by their name (their other sizes are depths).
_WIDTH_FIELDS = {"convmixer-<dim>-<depth>": "dim", "vit-<hidden>-<depth>": "hidden", "gpt-<dim>-<depth>": "dim"}
_PERCENT_SUFFIX = "-w<width>"


def model_at_width(name: str, width: float) -> str:
    """The registry name of model ``name`` at ``width`` times its width (``width`` 1 returns ``name``).

    ``convmixer-64-4`` at 0.5 is ``convmixer-32-4`` (dims, ViT hiddens and GPT dims are rounded to the nearest
    integer, at least 1); ``lenet5`` at 0.5 is ``lenet5-w50`` and ``resnet20-w50`` at 0.5 ``resnet20-w25`` (these
    families count their width in whole percents: a width that is not one is a :class:`ModelError`, never a
    silently rounded model). A model without a width (``tiny-cnn``) is a :class:`ModelError`.
    """
    if isinstance(width, bool) or not isinstance(width, int | float) or not width > 0 or width != width:
        raise ModelError(f"width must be a positive number, got {width!r}")
    spec = get_model_spec(name)
    if width == 1:
        return spec.name
    field = _WIDTH_FIELDS.get(spec.pattern)
    if field is not None:
        value = round(spec.sizes[field] * width)
        if value < 1:
            raise ModelError(f"{spec.name} at width {width:g} has no {field} left ({spec.sizes[field]} x {width:g} "
                             "rounds to 0)")
        sizes = {**spec.sizes, field: value}
        return _FIELD_RE.sub(lambda m: str(sizes[m.group(1)]), spec.pattern)
    if spec.pattern.endswith(_PERCENT_SUFFIX):
        stem, percent = spec.pattern[: -len(_PERCENT_SUFFIX)], spec.sizes["width"] * width
    elif spec.pattern + _PERCENT_SUFFIX in _REGISTRY:
        stem, percent = spec.pattern, 100 * width
    else:
        families = sorted([*_WIDTH_FIELDS, *(k for k in _REGISTRY if k.endswith(_PERCENT_SUFFIX))])
        raise ModelError(f"model {spec.name!r} has no width argument; families with one: {', '.join(families)}")
    whole = round(percent)
    if abs(percent - whole) > 1e-6 or whole < 1:
        raise ModelError(f"{spec.name} at width {width:g} is {percent:g} % of {stem}'s width; its width is a whole "
                         f"percent ({stem}-w<percent>): choose a width that gives one")
    return stem if whole == 100 else f"{stem}-w{whole}"


def create_model(
    name: str, *, num_classes: int = 10, in_channels: int = 3, image_size: int = 32, **options: Any
) -> nn.Module:
    """Build a freshly initialised model by name (see :func:`list_models`).

    ``image_size`` is the side of square inputs; it decides stem / flatten sizes. Family-specific
    ``options`` (e.g. ``kernel_size`` / ``patch_size`` for ConvMixer) are checked against the builder's
    signature so typos fail loudly with :class:`ModelError` instead of being ignored.
    """
    spec = get_model_spec(name)
    _check_positive("num_classes", num_classes)
    _check_positive("in_channels", in_channels)
    _check_positive("image_size", image_size)
    assert spec.builder is not None
    params = inspect.signature(spec.builder).parameters
    allowed = sorted(set(params) - set(spec.sizes) - {"num_classes", "in_channels", "image_size"})
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ModelError(f"model {spec.name!r} does not accept options {unknown}; it accepts {allowed}")
    return spec.builder(
        **spec.sizes, num_classes=num_classes, in_channels=in_channels, image_size=image_size, **options
    )


# --------------------------------------------------------------------------------------------- ConvMixer


class Residual(nn.Module):
    """``fn(x) + x``; a module (not a lambda) so the wrapped layers keep stable state-dict names."""

    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x) + x


class ConvMixer(nn.Sequential):
    """ConvMixer (Trockman & Kolter) laid out exactly like the PEMN paper's official code.

    Bias-free convolutions and head, so convmixer-256-8 with 10 classes has 581,120 conv+linear weights.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        *,
        kernel_size: int = 5,
        patch_size: int = 2,
        in_channels: int = 3,
        num_classes: int = 10,
    ) -> None:
        blocks: list[nn.Module] = [
            nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size, bias=False),
            nn.GELU(),
            nn.BatchNorm2d(dim),
        ]
        for _ in range(depth):
            blocks.append(
                nn.Sequential(
                    Residual(
                        nn.Sequential(
                            nn.Conv2d(dim, dim, kernel_size, groups=dim, padding="same", bias=False),
                            nn.GELU(),
                            nn.BatchNorm2d(dim),
                        )
                    ),
                    nn.Conv2d(dim, dim, kernel_size=1, bias=False),
                    nn.GELU(),
                    nn.BatchNorm2d(dim),
                )
            )
        blocks += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(dim, num_classes, bias=False)]
        super().__init__(*blocks)


@register_model(
    "convmixer-<dim>-<depth>",
    listed=("convmixer-256-6", "convmixer-256-8", "convmixer-512-6", "convmixer-512-8"),
)
def _convmixer(
    *,
    dim: int,
    depth: int,
    num_classes: int,
    in_channels: int,
    image_size: int,
    kernel_size: int = 5,
    patch_size: int = 2,
) -> nn.Module:
    _check_positive("kernel_size", kernel_size)
    _check_positive("patch_size", patch_size)
    if image_size < patch_size:
        raise ModelError(f"image_size {image_size} is smaller than the ConvMixer patch_size {patch_size}")
    return ConvMixer(
        dim,
        depth,
        kernel_size=kernel_size,
        patch_size=patch_size,
        in_channels=in_channels,
        num_classes=num_classes,
    )


# --------------------------------------------------------------------------------------------------- ViT


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: x + MHA(LN(x)), then x + MLP(LN(x)); MLP ratio 2 keeps small ViTs small."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: int = 2) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden)
        self.attn = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(hidden)
        self.mlp = nn.Sequential(
            nn.Linear(hidden, mlp_ratio * hidden), nn.GELU(), nn.Linear(mlp_ratio * hidden, hidden)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


def vit_heads(hidden: int) -> int:
    """Heads of 64 dims (``hidden // 64``, at least 1), lowered to the nearest divisor of ``hidden``."""
    heads = max(1, hidden // 64)
    while hidden % heads:
        heads -= 1
    return heads


class ViT(nn.Module):
    """Vision Transformer for small images (patch 4 by default, class token, learned position embedding).

    The patch embedding is a strided ``nn.Conv2d`` and every projection is an ``nn.Linear`` or
    ``nn.MultiheadAttention``, so the masking converter reaches all of them. The MLP ratio is 2 (not 4).
    """

    def __init__(
        self,
        hidden: int,
        depth: int,
        *,
        image_size: int = 32,
        patch_size: int = 4,
        in_channels: int = 3,
        num_classes: int = 10,
        heads: int | None = None,
        mlp_ratio: int = 2,
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ModelError(f"ViT image_size {image_size} must be divisible by patch_size {patch_size}")
        heads = vit_heads(hidden) if heads is None else heads
        if hidden % heads:
            raise ModelError(f"ViT hidden {hidden} must be divisible by heads {heads}")
        num_patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(in_channels, hidden, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, hidden))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.02)
        self.blocks = nn.Sequential(*(EncoderBlock(hidden, heads, mlp_ratio) for _ in range(depth)))
        self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, hidden)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


@register_model("vit-<hidden>-<depth>", listed=("vit-256-6", "vit-256-8", "vit-512-6", "vit-512-8"))
def _vit(
    *,
    hidden: int,
    depth: int,
    num_classes: int,
    in_channels: int,
    image_size: int,
    patch_size: int = 4,
    heads: int | None = None,
) -> nn.Module:
    _check_positive("patch_size", patch_size)
    if heads is not None:
        _check_positive("heads", heads)
    return ViT(
        hidden,
        depth,
        image_size=image_size,
        patch_size=patch_size,
        in_channels=in_channels,
        num_classes=num_classes,
        heads=heads,
    )


# ------------------------------------------------------------------------------------------------ ResNets


def _resnet_init(model: nn.Module) -> nn.Module:
    """torchvision's ResNet init (Kaiming-normal fan-out convs, BN 1/0): deterministic under a global seed."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


def _projection(in_ch: int, out_ch: int, stride: int) -> nn.Module | None:
    """Option-B shortcut: a 1x1 conv + BN when the residual changes shape, else identity (``None``)."""
    if stride == 1 and in_ch == out_ch:
        return None
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch))


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN/ReLU and a residual; ``expansion`` 1."""

    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _projection(in_ch, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride, as torchvision's v1.5), 1x1 expand by 4; with a residual."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = nn.Conv2d(in_ch, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _projection(in_ch, out_ch, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """Generic ResNet: stem, stages of residual blocks (later stages start at stride 2), pool, head."""

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: Sequence[int],
        widths: Sequence[int],
        *,
        stem: nn.Module,
        stem_channels: int,
        num_classes: int,
    ) -> None:
        super().__init__()
        self.stem = stem
        in_ch = stem_channels
        stages: list[nn.Module] = []
        for i, (n, planes) in enumerate(zip(layers, widths)):
            blocks: list[nn.Module] = []
            for j in range(n):
                blocks.append(block(in_ch, planes, stride=2 if (i > 0 and j == 0) else 1))
                in_ch = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        _resnet_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def cifar_resnet(depth: int, *, num_classes: int = 10, in_channels: int = 3, width: int = 100) -> ResNet:
    """CIFAR ResNet-(6n+2) of He et al. 2016: 3 stages of 16/32/64 channels (at ``width`` percent of them:
    :func:`scaled`), n BasicBlocks each.

    Uses option-B (1x1 conv + BN) projection shortcuts, so weight counts are slightly above the paper's
    option-A numbers (resnet32: 464,432 here vs 461,872).
    """
    if depth < 8 or (depth - 2) % 6:
        raise ModelError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}")
    _check_positive("width", width)
    n = (depth - 2) // 6
    widths = [scaled(c, width) for c in (16, 32, 64)]
    stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]),
                         nn.ReLU())
    return ResNet(BasicBlock, [n, n, n], widths, stem=stem, stem_channels=widths[0], num_classes=num_classes)


def imagenet_resnet(
    layers: Sequence[int],
    block: type[BasicBlock | Bottleneck],
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 224,
    imagenet_stem: bool | None = None,
    width: int = 100,
) -> ResNet:
    """torchvision-layout ResNet (widths 64/128/256/512, at ``width`` percent of them: :func:`scaled`).

    The stem is torchvision's 7x7 stride-2 conv + 3x3 max-pool when ``image_size >= 64`` (or
    ``imagenet_stem=True``); for smaller inputs (32x32, 28x28, 8x8) a 3x3 stride-1 conv without max-pool,
    as is usual on CIFAR, so the feature maps are not shrunk to nothing.
    """
    _check_positive("width", width)
    widths = [scaled(c, width) for c in (64, 128, 256, 512)]
    use_imagenet_stem = image_size >= 64 if imagenet_stem is None else imagenet_stem
    if use_imagenet_stem:
        stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
    else:
        stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()
        )
    return ResNet(block, layers, widths, stem=stem, stem_channels=widths[0], num_classes=num_classes)


def _register_cifar_resnet(depth: int) -> None:
    @register_model(f"resnet{depth}")
    def _build(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
        return cifar_resnet(depth, num_classes=num_classes, in_channels=in_channels)

    @register_model(f"resnet{depth}{_PERCENT_SUFFIX}", listed=(f"resnet{depth}-w50",) if depth == 20 else ())
    def _build_width(*, width: int, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
        return cifar_resnet(depth, num_classes=num_classes, in_channels=in_channels, width=width)


for _depth in (20, 32, 56):
    _register_cifar_resnet(_depth)


def _register_imagenet_resnet(name: str, layers: Sequence[int], block: type[BasicBlock | Bottleneck]) -> None:
    def build(*, num_classes: int, in_channels: int, image_size: int, imagenet_stem: bool | None = None,
              width: int = 100) -> nn.Module:
        return imagenet_resnet(layers, block, num_classes=num_classes, in_channels=in_channels,
                               image_size=image_size, imagenet_stem=imagenet_stem, width=width)

    @register_model(name)
    def _build(*, num_classes: int, in_channels: int, image_size: int,
               imagenet_stem: bool | None = None) -> nn.Module:
        return build(num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                     imagenet_stem=imagenet_stem)

    register_model(f"{name}{_PERCENT_SUFFIX}")(build)


_register_imagenet_resnet("resnet18", [2, 2, 2, 2], BasicBlock)
_register_imagenet_resnet("resnet50", [3, 4, 6, 3], Bottleneck)


# ----------------------------------------------------------------------------------------- MLPs / LeNet


@register_model("mlp")
def _mlp(*, num_classes: int, in_channels: int, image_size: int, hidden: int = 256) -> nn.Module:
    """Two hidden ReLU layers of 256 units over the flattened image."""
    _check_positive("hidden", hidden)
    return _mlp_layers(num_classes, in_channels, image_size, hidden)


@register_model(f"mlp{_PERCENT_SUFFIX}", listed=("mlp-w25",))
def _mlp_width(*, width: int, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """``mlp`` with ``width`` percent of its 256 hidden units."""
    return _mlp_layers(num_classes, in_channels, image_size, scaled(256, width))


def _mlp_layers(num_classes: int, in_channels: int, image_size: int, hidden: int, hidden2: int | None = None
                ) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_channels * image_size * image_size, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden if hidden2 is None else hidden2),
        nn.ReLU(),
        nn.Linear(hidden if hidden2 is None else hidden2, num_classes),
    )


@register_model("mlp-<h1>-<h2>", listed=("mlp-300-100",))
def _mlp_sized(*, h1: int, h2: int, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """Two hidden ReLU layers of ``h1`` and ``h2`` units over the flattened image: ``mlp-300-100`` is LeNet-300-100
    (784-300-100-10 on MNIST, the fully connected net of SupSup's Permuted-MNIST runs)."""
    return _mlp_layers(num_classes, in_channels, image_size, h1, h2)


class LeNet5(nn.Module):
    """LeNet-5 (conv 6@5x5, pool, conv 16@5x5, pool, FC 120/84/classes, at ``width`` percent of those sizes)
    adapted to the input size.

    On 32x32 it is the classic unpadded net; inputs below 32 pad the first conv by 2 (28x28 MNIST then
    matches the classic 16x5x5 feature map), and maps that would be too small for an unpadded 5x5 second
    conv pad it by 2 too (8x8 digits). The flatten size is measured with a dummy forward.
    """

    def __init__(self, *, num_classes: int = 10, in_channels: int = 1, image_size: int = 28, width: int = 100) -> None:
        super().__init__()
        if image_size < 4:
            raise ModelError(f"LeNet-5 needs image_size >= 4, got {image_size}")
        _check_positive("width", width)
        c1, c2, f1, f2 = (scaled(n, width) for n in (6, 16, 120, 84))
        pad1 = 0 if image_size >= 32 else 2
        after1 = (image_size + 2 * pad1 - 4) // 2
        pad2 = 0 if after1 >= 10 else 2
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 5, padding=pad1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5, padding=pad2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        with torch.no_grad():
            flat = self.features(torch.zeros(1, in_channels, image_size, image_size)).shape[1]
        self.classifier = nn.Sequential(
            nn.Linear(flat, f1), nn.ReLU(), nn.Linear(f1, f2), nn.ReLU(), nn.Linear(f2, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model("lenet5")
def _lenet5(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return LeNet5(num_classes=num_classes, in_channels=in_channels, image_size=image_size)


@register_model(f"lenet5{_PERCENT_SUFFIX}", listed=("lenet5-w25", "lenet5-w50"))
def _lenet5_width(*, width: int, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """LeNet-5 with ``width`` percent of the channels and units of every hidden layer (6/16/120/84)."""
    return LeNet5(num_classes=num_classes, in_channels=in_channels, image_size=image_size, width=width)


@register_model("tiny-cnn")
def _tiny_cnn(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """A few hundred parameters with both Conv2d (with and without bias), BN and Linear: for fast tests."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, num_classes),
    )


@register_model("tiny-mlp")
def _tiny_mlp(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """Flatten + a 16-unit hidden layer: the smallest useful Linear-only model, for fast tests."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_channels * image_size * image_size, 16),
        nn.ReLU(),
        nn.Linear(16, num_classes),
    )


# --------------------------------------------------------------------------------------------------- GPT


@register_model("gpt-<dim>-<depth>", listed=("gpt-128-4",), serves="char-lm")
def _gpt(
    *,
    dim: int,
    depth: int,
    num_classes: int,
    in_channels: int,
    image_size: int,
    block_size: int = 64,
    heads: int | None = None,
) -> nn.Module:
    """Decoder-only GPT (:mod:`pemn.training.gpt`) over ``num_classes`` tokens (the vocabulary size) with a
    context of ``block_size``; heads of 32 dims (:func:`pemn.training.gpt.gpt_heads`) unless ``heads`` is given.
    ``in_channels`` and ``image_size`` do not apply (text input)."""
    from pemn.training.gpt import GPT

    _check_positive("block_size", block_size)
    if heads is not None:
        _check_positive("heads", heads)
        if dim % heads:
            raise ModelError(f"GPT dim {dim} must be divisible by heads {heads}")
    return GPT(num_classes, dim, depth, block_size=block_size, heads=heads)
