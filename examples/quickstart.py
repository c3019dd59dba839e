"""The README quickstart: convert -> train a few steps -> save -> load -> the same outputs."""

import torch
from torch import nn

import pemn


def make_model() -> nn.Module:  # any model: pemn needs no special layers
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


model = pemn.convert_(make_model(), pemn.PEMNConfig(strategy="rp", ratio=1e-3, keep=0.5, seed=0))
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
for _ in range(20):  # only the mask scores and the BatchNorm/bias extras train
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
pemn.save(model, "model.pemn", coding="entropy")
loaded = pemn.load("model.pemn", make_model())
assert torch.equal(loaded.eval()(x), model.eval()(x))
pemn.summary("model.pemn")
