"""The process-group view of a run: world size and rank under ``torchrun``, collectives that are no-ops
when not distributed, and the one device resolver (``auto``/``cpu``/``cuda``/``cuda:N``) of training and the CLI;
beside it the :class:`Accelerator` (Lightning Fabric's job, in small): precision (float16 autocast and the
GradScaler), the DDP wrapper, and the backward / clip / optimizer step."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from pemn.training.errors import OptionError

__all__ = ["MAX_AUTO_THREADS", "Accelerator", "Dist", "autocast", "default_threads", "device_option", "parse_device",
           "resolve_device", "set_threads", "using_threads"]

#: The most CPU threads ``threads=None`` picks (more rarely pays for the models pemn trains on a CPU).
MAX_AUTO_THREADS = 4


def default_threads() -> int:
    """The CPU thread count a run uses when ``threads`` is not given: the CPUs this process may use that other
    processes leave idle (1-minute load average), at least 1 and at most :data:`MAX_AUTO_THREADS`.

    On a busy machine more threads than idle CPUs makes torch's OpenMP workers wait on each other: the demo took
    4-40x longer with the default thread count than with one thread (benchmarks/bench_threads.py).
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except (AttributeError, OSError):
        busy = 0.0
    return max(1, min(MAX_AUTO_THREADS, cpus, int(cpus - busy + 0.5)))


def set_threads(threads: int | None) -> tuple[int, int]:
    """Set torch's CPU thread count (``None``: :func:`default_threads`); returns ``(new, previous)``."""
    previous = torch.get_num_threads()
    n = default_threads() if threads is None else int(threads)
    if n != previous:
        torch.set_num_threads(n)
    return n, previous


@contextlib.contextmanager
def using_threads(threads: int | None) -> Iterator[int]:
    """torch's CPU threads at ``threads`` (:func:`set_threads`; None: :func:`default_threads`) while the block
    runs, the caller's count restored afterwards; yields the count used."""
    n, previous = set_threads(threads)
    try:
        yield n
    finally:
        torch.set_num_threads(previous)


def parse_device(spec: str) -> torch.device | None:
    """``None`` for ``"auto"``, else the ``torch.device``; ValueError naming the valid forms."""
    if spec in ("auto", "", None):
        return None
    try:
        return torch.device(spec)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {spec!r}") from None


def resolve_device(spec: str, local_rank: int = 0, world: int = 1) -> torch.device:
    """The device ``spec`` names (``auto``: CUDA when available, else the CPU); under ``torchrun`` a bare
    ``cuda`` means this rank's GPU. ValueError for a malformed spec or CUDA that is not available."""
    device = parse_device(spec)
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r} requested but CUDA is not available on this machine")
        if device.index is None:
            device = torch.device("cuda", local_rank if world > 1 else torch.cuda.current_device())
    return device


def device_option(spec: str) -> torch.device:
    """:func:`resolve_device` of a command's ``--device``: :class:`~pemn.training.errors.OptionError` (the
    command line's exit code 2) where it names no device here."""
    try:
        return resolve_device(spec)
    except ValueError as e:
        raise OptionError(f"--device: {e}") from None


class Dist:
    """The process group view of this run (world 1 when not distributed)."""

    def __init__(self) -> None:
        self.world, self.rank, self.local_rank, self.owns_group = 1, 0, 0, False
        self.device = torch.device("cpu")

    def setup(self, device_spec: str) -> torch.device:
        if dist.is_available() and dist.is_initialized():
            self.world, self.rank = dist.get_world_size(), dist.get_rank()
            self.local_rank = int(os.environ.get("LOCAL_RANK", self.rank))
        else:
            world = int(os.environ.get("WORLD_SIZE", "1") or 1)
            if world > 1:
                self.world, self.rank = world, int(os.environ.get("RANK", "0"))
                self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = resolve_device(device_spec, self.local_rank, self.world)
        if self.world > 1 and not dist.is_initialized():
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            dist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")
            self.owns_group = True
        elif self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        return self.device

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_reduce_(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(t)
        return t

    def barrier(self) -> None:
        if self.enabled:
            self.all_reduce_(torch.zeros(1, device=self.device))

    def broadcast_str(self, text: str) -> str:
        if not self.enabled:
            return text
        data = torch.tensor(list(text.encode()), dtype=torch.uint8, device=self.device)
        size = torch.tensor([data.numel()], dtype=torch.int64, device=self.device)
        dist.broadcast(size, 0)
        if not self.main:
            data = torch.empty(int(size), dtype=torch.uint8, device=self.device)
        dist.broadcast(data, 0)
        return bytes(data.cpu().tolist()).decode()

    def all_equal(self, digest: bytes) -> bool:
        if not self.enabled:
            return True
        mine = torch.tensor(list(digest), dtype=torch.uint8, device=self.device)
        gathered = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(gathered, mine)
        return all(torch.equal(g, gathered[0]) for g in gathered)

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False



def autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager[Any]:
    """float16 autocast on CUDA when ``amp``; a no-op context otherwise."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


class Accelerator:
    """How a run's steps execute on its device, beside :class:`Dist` (Lightning Fabric's ``Fabric``, in small):
    the precision (``amp``: float16 autocast and a GradScaler, CUDA only), the DDP wrapper of the model under
    ``torchrun``, and the optimizer step (backward, loss-scaled under AMP; optional gradient clipping on unscaled
    gradients; the step)."""

    def __init__(self, group: Dist, amp: bool | None, log: Callable[[str], None] | None = None) -> None:
        self.dist = group
        self.device = group.device
        amp = bool(amp if amp is not None else self.device.type == "cuda")
        if amp and self.device.type != "cuda":
            if log is not None:
                log(f"note: amp needs CUDA; training in float32 on {self.device}")
            amp = False
        self.amp = amp
        self.scaler: torch.amp.GradScaler | None = torch.amp.GradScaler("cuda") if amp else None

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The forward pass's precision context."""
        return autocast(self.device, self.amp)

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` in DDP under ``torchrun`` (its non-persistent buffers, the shared prototype, are identical on
        every rank and never synced); ``model`` itself otherwise."""
        if not self.dist.enabled:
            return model
        ignore = [f"{m}.{b}" if m else b for m, mod in model.named_modules()
                  for b in mod._non_persistent_buffers_set]  # the shared prototype: identical, never synced
        nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ignore)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def sync_buffers(self, model: nn.Module) -> None:
        """Give every rank rank 0's persistent buffers, the BatchNorm statistics (DDP only syncs them at the next
        forward); the non-persistent ones (the shared prototype) are identical already."""
        if not self.dist.enabled:
            return
        for mod in model.modules():
            for name, b in mod._buffers.items():
                if b is not None and name not in mod._non_persistent_buffers_set:
                    dist.broadcast(b, 0)

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, params: Iterable[nn.Parameter],
             clip_norm: float | None = None) -> None:
        """Backward (loss-scaled under AMP), optional gradient clipping (on unscaled gradients), step."""
        scaler = self.scaler
        (scaler.scale(loss) if scaler is not None else loss).backward()
        if clip_norm is not None:
            if scaler is not None:
                scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(params, clip_norm)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
