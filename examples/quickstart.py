"""The README quickstart: convert -> train -> save -> load -> the same outputs, and what the file weighs."""

import torch
from torch import nn

import pemn


def make_model() -> nn.Module:  # any model: pemn needs no special layers
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))


torch.manual_seed(0)  # data to learn: 10 classes, each a cloud of points around its own centre
centres = torch.randn(10, 64)
y, y_test = torch.randint(0, 10, (4096,)), torch.randint(0, 10, (1024,))
x, x_test = centres[y] + 2 * torch.randn(4096, 64), centres[y_test] + 2 * torch.randn(1024, 64)

model = pemn.convert_(make_model(), pemn.PEMNConfig(strategy="rp", ratio=1e-2, keep=0.5, seed=0))
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.01)
for _ in range(2):  # only the mask scores and the biases train
    for i in range(0, len(x), 64):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[i : i + 64]), y[i : i + 64]).backward()
        opt.step()
pemn.save(model, "model.pemn", prototype="seed")  # the fixed weights travel as their seed
loaded = pemn.load("model.pemn", make_model()).eval()  # a fresh, unconverted model
assert torch.equal(loaded(x_test), model.eval()(x_test))  # bit-identical outputs
print(f"held-out accuracy {(loaded(x_test).argmax(1) == y_test).float().mean():.1%}")
pemn.summary("model.pemn")  # bytes by component, paper and honest ratios
