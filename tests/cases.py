"""Tiny models covering every supported layer type, and the strategies they are converted with.

Shared by the tests and by the subprocess they start (which imports this file by path), so each factory
builds the same architecture from scratch; weights come from torch's global RNG, seeded by the caller.
"""

from __future__ import annotations

import torch
from torch import nn

from pemn import PEMNConfig


class Attention(nn.Module):
    """MultiheadAttention (packed in-projection, or separate q/k/v when kdim/vdim differ) plus a head."""

    def __init__(self, kdim: int | None = None, vdim: int | None = None) -> None:
        super().__init__()
        self.kv = nn.Linear(8, kdim) if kdim else None
        self.v = nn.Linear(8, vdim) if vdim else None
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True, kdim=kdim, vdim=vdim)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kv(x) if self.kv is not None else x
        v = self.v(x) if self.v is not None else x
        y, _ = self.attn(x, k, v, need_weights=False)
        return self.head(self.norm(x + y).mean(1))


def linear_bias() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def linear_nobias() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 5, bias=False), nn.ReLU(), nn.Linear(5, 3, bias=False))


def conv1d() -> nn.Module:
    return nn.Sequential(nn.Conv1d(3, 4, 3, padding=1), nn.BatchNorm1d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 8, 3))


def conv2d() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.Conv2d(6, 4, 3, padding=1, padding_mode="circular"), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 3))


def depthwise_conv2d() -> nn.Module:
    return nn.Sequential(nn.Conv2d(4, 4, 3, padding="same", groups=4, bias=False), nn.BatchNorm2d(4),
                         nn.GELU(), nn.Conv2d(4, 4, 1, bias=False), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 3, bias=False))


def grouped_conv2d() -> nn.Module:
    return nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, groups=2), nn.ReLU(), nn.Conv2d(8, 4, 1, groups=4),
                         nn.Flatten(), nn.Linear(4 * 4 * 4, 3))


def conv3d() -> nn.Module:
    return nn.Sequential(nn.Conv3d(2, 3, 3, padding=1), nn.BatchNorm3d(3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(3 * 4 * 4 * 4, 3))


def mha() -> nn.Module:
    return Attention()


def mha_kdim() -> nn.Module:
    return Attention(kdim=6, vdim=4)


#: name -> (factory, input shape)
MODELS: dict[str, tuple] = {
    "linear_bias": (linear_bias, (4, 6)),
    "linear_nobias": (linear_nobias, (4, 6)),
    "conv1d": (conv1d, (2, 3, 8)),
    "conv2d": (conv2d, (2, 3, 4, 4)),
    "depthwise_conv2d": (depthwise_conv2d, (2, 4, 5, 5)),
    "grouped_conv2d": (grouped_conv2d, (2, 4, 4, 4)),
    "conv3d": (conv3d, (2, 2, 4, 4, 4)),
    "mha": (mha, (2, 5, 8)),
    "mha_kdim": (mha_kdim, (2, 5, 8)),
}

#: name -> PEMNConfig keyword arguments
STRATEGIES: dict[str, dict] = {
    "mask": {"strategy": "mask"},
    "one_layer": {"strategy": "one_layer", "keep": 0.3},
    "mp": {"strategy": "mp"},
    "mp_rescale_rand": {"strategy": "mp", "rescale": True, "fill": "rand"},
    "rp": {"strategy": "rp", "ratio": 0.1},
    "rp_rand_uniform": {"strategy": "rp", "ratio": 0.05, "fill": "rand", "init": "kaiming_uniform"},
    "rp_signed": {"strategy": "rp", "ratio": 1e-3, "init": "signed_constant", "keep": 0.7, "seed": 7},
    "rp_global": {"strategy": "rp", "ratio": 0.1, "scope": "global", "keep": 0.2},
}


def build(model_name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return MODELS[model_name][0]()


def make_input(model_name: str, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(MODELS[model_name][1], generator=g)


def config(strategy_name: str) -> PEMNConfig:
    return PEMNConfig(**STRATEGIES[strategy_name])


def train_steps(model: nn.Module, x: torch.Tensor, steps: int = 3, lr: float = 0.5) -> None:
    """A few SGD steps on a fixed objective, so masks move away from their initial top-k."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        out = model(x)
        loss = (out - torch.arange(out.shape[-1], dtype=out.dtype)).pow(2).mean()
        loss.backward()
        opt.step()
