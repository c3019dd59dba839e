"""Knowledge distillation from a dense teacher (``pemn train --teacher PATH``).

The teacher is a ``model.safetensors`` written by ``pemn train --strategy dense``: its safetensors metadata
names the registry model (``"model"``), which is rebuilt for the student's dataset shape and loaded strictly.
It runs in eval mode without gradients on the student's (augmented) batch. The loss is Hinton et al.'s

    loss = (1 - w) * CE(student, labels) + w * T**2 * KL(softmax(teacher / T) || softmax(student / T))

(``w`` = ``distill_weight``, ``T`` = ``distill_temperature``; the ``T**2`` keeps the soft term's gradient scale
independent of ``T``).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["distill_loss", "load_teacher"]


def load_teacher(path: str | Path, *, num_classes: int, in_channels: int, image_size: int,
                 device: torch.device) -> tuple[nn.Module, str]:
    """The dense teacher at ``path`` (eval mode, frozen, on ``device``) and its registry model name.

    ValueError (one line, saying what to pass instead) if the file is missing, not a dense pemn training
    output, or does not fit the dataset's shape.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    from pemn.training.models import create_model

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"teacher {str(p)!r} does not exist; pass the model.safetensors of a "
                         "`pemn train --strategy dense` run")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(p))
    except Exception as e:  # safetensors raises its own error types for malformed files
        raise ValueError(f"teacher {str(p)!r} is not a safetensors file ({str(e).splitlines()[0][:200]}); pass the "
                         "model.safetensors of a `pemn train --strategy dense` run") from None
    if meta.get("format") != "pt" or not meta.get("model"):
        raise ValueError(f"teacher {str(p)!r} is not a dense model of `pemn train --strategy dense` (its metadata "
                         f"{dict(list(meta.items())[:4])} names no model); pruned or PEMN files cannot teach")
    name = meta["model"]
    with torch.random.fork_rng(devices=[]):
        teacher = create_model(name, num_classes=num_classes, in_channels=in_channels, image_size=image_size)
    try:
        teacher.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"teacher {str(p)!r} ({name}) does not fit this dataset's shape ({num_classes} classes, "
                         f"{in_channels} channels, {image_size}px): {str(e).splitlines()[0][:300]}") from None
    teacher.to(device).eval()
    for prm in teacher.parameters():
        prm.requires_grad_(False)
    return teacher, name


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, hard_loss: torch.Tensor,
                 temperature: float, weight: float) -> torch.Tensor:
    """``(1 - weight) * hard_loss + weight * T**2 * KL(teacher_T || student_T)`` (batch mean)."""
    t = float(temperature)
    log_p = F.log_softmax(student_logits.float() / t, dim=1)
    log_q = F.log_softmax(teacher_logits.float() / t, dim=1)
    soft = F.kl_div(log_p, log_q, reduction="batchmean", log_target=True) * (t * t)
    return (1.0 - weight) * hard_loss + weight * soft
