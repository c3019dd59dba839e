"""Which task is this batch from? SupSup's one-shot task inference over a model's tasks (:mod:`pemn.taskset`).

All tasks' masks are superposed with coefficients ``alpha_i = 1 / N``: each masked weight becomes
``prototype * sum_i alpha_i * M_i`` (and each floating-point extra ``sum_i alpha_i * e_i``, a linear mix of the
tasks' biases and norms); the batch goes through that one network, and the task whose coefficient has the most
negative gradient of an objective of the outputs (the objective falls fastest by leaning towards it) is the answer
(Wortsman et al. 2020, "Supermasks in Superposition", one-shot rule). One forward and one backward pass.

Objectives (:data:`OBJECTIVES`):

- ``"entropy"``: SupSup's, the mean over the batch of each output's entropy;
- ``"information"`` (the default): that mean minus the entropy of the batch's mean output, i.e. minus the mutual
  information between an input of the batch and its predicted class (the information-maximisation loss of
  test-time adaptation, SHOT, Liang et al. 2020). The entropy alone also falls when a direction makes every input
  of the batch confidently the *same* class; the second term cancels that, so only a direction that makes the
  batch confident *and* spread over the classes, as its own task's masks do, wins.

When it works (RESULTS.md "Many tasks", 10 Permuted-MNIST tasks of LeNet-300-100, batches of 128): one-shot is a
first-order estimate at the centre of the simplex, so it needs every task's model close to that centre: masks that
keep about half the weights (SupSup's keep ~50 %) and that training only perturbed from their random start
(SupSup: lr 1e-4). Tasks trained at keep 0.5 and AdamW lr 3e-4 are identified in 98.99-99.75 % of batches (3
seeds; information; SupSup's entropy 52-78 %); tasks at keep 0.08 whose masks AdamW at lr 0.03 rewrote entirely
in 72 % (entropy 12.5 %).
``min-entropy`` (N forward passes) identifies both (100 %).

:class:`Superposition` decodes the tasks' masks once (``N x weights`` booleans) and answers any number of batches;
:func:`infer_task` is the one-call form. The model is not changed.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from pemn.convert import masked_weights, materialize, unwrap
from pemn.taskset import tasks as task_names
from pemn.taskset import using_task

__all__ = ["METHODS", "OBJECTIVES", "Superposition", "infer_task"]

#: The task inference rules: one forward and backward pass of the superposition, or each task's own model.
METHODS = ("one-shot", "min-entropy")
#: What the one-shot rule differentiates (see the module doc).
OBJECTIVES = ("information", "entropy")


class Superposition:
    """The tasks ``names`` (default: all) of a model, ready to superpose. Their heads must have one shape."""

    def __init__(self, model: nn.Module, names: list[str] | None = None) -> None:
        root = unwrap(model)
        self.names = list(task_names(root) if names is None else names)
        if not self.names:
            raise ValueError("task inference needs at least one task")
        masks: dict[str, list[torch.Tensor]] = {}
        extras: dict[str, list[torch.Tensor]] = {}
        shapes: dict[str, tuple[int, ...]] | None = None
        for name in self.names:
            with using_task(root, name):
                mws = masked_weights(root)
                mine = {n: tuple(mw.shape) for n, mw in mws.items()}
                if shapes is None:
                    shapes = mine
                    self.bases = {n: mw.base().detach() for n, mw in mws.items()}
                    self.plain = materialize(root).eval()
                elif mine != shapes:
                    raise ValueError(f"task {name!r} has other weight shapes (another head?) than {self.names[0]!r}: "
                                     "task inference compares tasks of one output size")
                for n, mw in mws.items():
                    masks.setdefault(n, []).append(mw.current_mask().detach().reshape(-1))
                for k, t in root.state_dict().items():
                    if k not in mws and t.is_floating_point() and ".pemn_" not in f".{k}":
                        extras.setdefault(k, []).append(t.detach())
        self.masks = {n: torch.stack(v) for n, v in masks.items()}  # [N, numel] bool
        self.extras = {k: torch.stack(v) for k, v in extras.items() if not all(torch.equal(v[0], u) for u in v)}
        self.plain.requires_grad_(False)

    def objective_gradient(self, x: torch.Tensor, objective: str = "information") -> torch.Tensor:
        """d(objective)/d(alpha) at ``alpha_i = 1/N`` for the batch ``x``: one value per task (:data:`OBJECTIVES`)."""
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
        n = len(self.names)
        alpha = torch.full((n,), 1.0 / n, requires_grad=True)
        params = {}
        for name, m in self.masks.items():
            base = self.bases[name]
            mix = (alpha.to(base.dtype) @ m.to(base.dtype)).view(base.shape)
            params[name] = base * mix
        for k, stacked in self.extras.items():
            params[k] = torch.tensordot(alpha.to(stacked.dtype), stacked, dims=1)
        logits = functional_call(self.plain, params, (x,))
        logp = torch.log_softmax(logits.float(), dim=-1)
        probs = logp.exp()
        value = -(probs * logp).sum(-1).mean()
        if objective == "information":
            mean = probs.mean(0)
            value = value + (mean * torch.log(mean.clamp_min(torch.finfo(mean.dtype).tiny))).sum()
        (grad,) = torch.autograd.grad(value, alpha)
        return grad

    def entropy_gradient(self, x: torch.Tensor) -> torch.Tensor:
        """d(mean output entropy)/d(alpha) at ``alpha_i = 1/N`` for the batch ``x`` (SupSup's objective)."""
        return self.objective_gradient(x, "entropy")

    def entropies(self, x: torch.Tensor) -> torch.Tensor:
        """The mean output entropy of each task's own model on the batch ``x`` (N forward passes)."""
        out = []
        with torch.no_grad():
            for i in range(len(self.names)):
                params = {name: self.bases[name] * m[i].to(self.bases[name].dtype).view(self.bases[name].shape)
                          for name, m in self.masks.items()}
                params.update({k: stacked[i] for k, stacked in self.extras.items()})
                logp = torch.log_softmax(functional_call(self.plain, params, (x,)).float(), dim=-1)
                out.append(-(logp.exp() * logp).sum(-1).mean())
        return torch.stack(out)

    def infer(self, x: torch.Tensor, method: str = "one-shot", objective: str = "information") -> str:
        """The task the batch ``x`` most likely comes from: ``"one-shot"`` (SupSup's rule: one forward and one
        backward pass of the superposition, differentiating ``objective``) or ``"min-entropy"`` (the task whose own
        model is the most confident on the batch: N forward passes, SupSup's brute-force baseline)."""
        if method == "one-shot":
            return self.names[int(torch.argmin(self.objective_gradient(x, objective)))]
        if method == "min-entropy":
            return self.names[int(torch.argmin(self.entropies(x)))]
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")


def infer_task(model: nn.Module, x: torch.Tensor, names: list[str] | None = None, *,
               method: str = "one-shot", objective: str = "information") -> str:
    """The name of the task (of ``names``, default all of the model's) that the batch ``x`` comes from, by the
    one-shot rule (``objective`` "information" or SupSup's "entropy") or ``method="min-entropy"``; see
    :class:`Superposition` to answer many batches."""
    return Superposition(model, names).infer(x, method, objective)
