"""Portable random prototypes and the shared bank that masked layers take their weights from.

The values must be bit-identical on every OS, CPU, GPU and torch/numpy version, so they never come
from torch's or numpy's generators. The algorithm, complete enough to reimplement elsewhere:

1. **Bits.** All arithmetic is on unsigned 64-bit integers, wrapping. ``mix(z)`` is SplitMix64's
   finaliser: ``z ^= z >> 30; z *= 0xBF58476D1CE4E5B9; z ^= z >> 27; z *= 0x94D049BB133111EB;
   z ^= z >> 31``. With ``G = 0x9E3779B97F4A7C15``, a stream ``s`` of seed ``seed`` has the key
   ``key = mix(mix(seed + G) ^ ((s + 1) * G))`` and its ``i``-th word (i = 0, 1, ...) is
   ``mix(key + (i + 1) * G)``.
2. **Uniform.** ``u = ((word >> 11) + 0.5) * 2**-53``, a double in (0, 1) that is never 0 or 1.
3. **Value**, computed in IEEE double precision with only +, -, *, / and sqrt (correctly rounded
   everywhere), then rounded to float32. ``std = sqrt(2 / fan_in)``.

   - ``kaiming_normal``: ``std * z`` with ``z`` the standard normal quantile of ``u`` by Acklam's
     rational approximation (relative error < 1.2e-9; coefficients below). Its tails need
     ``log(p)``, computed portably as ``e * LN2 + 2 * atanh_series((m - 1) / (m + 1))`` where
     ``p = m * 2**e`` (frexp, m in [0.5, 1)) and the series ``t * sum_{k<24} t**(2k) / (2k + 1)`` is
     evaluated by Horner's rule from the highest term.
   - ``kaiming_uniform``: ``(2u - 1) * sqrt(3) * std``.
   - ``signed_constant``: ``+std`` if ``u >= 0.5`` else ``-std``.
4. **Streams.** The strategy (its planner in :mod:`pemn.strategies`) decides which streams exist (layers are numbered in
   ``model.named_modules()`` order, a weight shared by several layers counting once, at its first user;
   ``fan_in`` is that of the layer named, by its type's rule in :mod:`pemn.registry`: ``prod(shape[1:])``
   for torch's layers, ``shape[0]`` for transformers' ``Conv1D``; a shared weight takes its first user's):

   - ``mask``: layer ``i`` uses stream ``i``, its own fan-in and length ``numel_i``.
   - ``one_layer``: every layer uses the stream of the first layer with the same weight shape.
   - ``mp``: the largest layer ``j`` (first one on ties): stream ``j``, length ``numel_j``.
   - ``rp``: stream ``j`` as for mp, but only its first ``int(ratio * numel_j) + 1`` values; layers
     see it tiled to ``numel_j`` values.
   - ``fill="rand"`` (mp/rp): the expanded vector ``v`` becomes ``v[perm]`` where ``perm`` is the
     stable argsort of the words of stream ``2**62`` (``numel_j`` of them).

   Every layer takes the first ``numel`` values of its source, reshaped row-major to its weight.
5. **Fingerprint.** SHA-256 over the sources sorted by name, each as ``name`` (UTF-8), a zero byte,
   its length (8 bytes little-endian) and its float32 values (little-endian).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pemn.config import PEMNConfig
from pemn.registry import fan_in_torch as fan_in  # torch's convention, prod(shape[1:])
from pemn.strategies import STRATEGY_TABLE, stored_length

_G = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_PERM_STREAM = 2**62
_CHUNK = 1 << 22
_LN2 = 0.6931471805599453

# Acklam's inverse normal CDF.
_A = (-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02,
      1.383577518672690e02, -3.066479806614716e01, 2.506628277459239e00)
_B = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02,
      6.680131188771972e01, -1.328068155288572e01)
_C = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00,
      -2.549671348979540e00, 4.374664141464968e00, 2.938163982698783e00)
_D = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)
_P_LOW = 0.02425


def _mix(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def _stream_key(seed: int, stream: int) -> np.uint64:
    with np.errstate(over="ignore"):
        k0 = _mix(np.array([seed], dtype=np.uint64) + _G)
        s1 = (np.array([stream], dtype=np.uint64) + np.uint64(1)) * _G
        return _mix(k0 ^ s1)[0]


def stream_words(seed: int, stream: int, start: int, count: int) -> np.ndarray:
    """Words ``start .. start+count-1`` of a stream (uint64)."""
    key = _stream_key(seed, stream)
    i = np.arange(start + 1, start + count + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return _mix(key + i * _G)


def _uniform(words: np.ndarray) -> np.ndarray:
    return ((words >> np.uint64(11)).astype(np.float64) + 0.5) * (2.0**-53)


def _portable_log(p: np.ndarray) -> np.ndarray:
    m, e = np.frexp(p)
    t = (m - 1.0) / (m + 1.0)
    t2 = t * t
    acc = np.zeros_like(t)
    for k in range(23, -1, -1):
        acc = acc * t2 + 1.0 / (2 * k + 1)
    return e.astype(np.float64) * _LN2 + 2.0 * t * acc


def _tail(q: np.ndarray) -> np.ndarray:
    num = ((((_C[0] * q + _C[1]) * q + _C[2]) * q + _C[3]) * q + _C[4]) * q + _C[5]
    den = (((_D[0] * q + _D[1]) * q + _D[2]) * q + _D[3]) * q + 1.0
    return num / den


def _normal_quantile(u: np.ndarray) -> np.ndarray:
    z = np.empty_like(u)
    low = u < _P_LOW
    high = u > 1.0 - _P_LOW
    mid = ~(low | high)
    q = u[mid] - 0.5
    r = q * q
    num = (((((_A[0] * r + _A[1]) * r + _A[2]) * r + _A[3]) * r + _A[4]) * r + _A[5]) * q
    den = ((((_B[0] * r + _B[1]) * r + _B[2]) * r + _B[3]) * r + _B[4]) * r + 1.0
    z[mid] = num / den
    z[low] = _tail(np.sqrt(-2.0 * _portable_log(u[low])))
    z[high] = -_tail(np.sqrt(-2.0 * _portable_log(1.0 - u[high])))
    return z


def random_values(seed: int, stream: int, count: int, fan_in: int, init: str) -> np.ndarray:
    """The first ``count`` float32 values of a stream, distributed as ``init`` for ``fan_in``."""
    std = math.sqrt(2.0 / fan_in)
    out = np.empty(count, dtype=np.float32)
    for start in range(0, count, _CHUNK):
        n = min(_CHUNK, count - start)
        u = _uniform(stream_words(seed, stream, start, n))
        if init == "kaiming_normal":
            v = _normal_quantile(u) * std
        elif init == "kaiming_uniform":
            v = (2.0 * u - 1.0) * (math.sqrt(3.0) * std)
        elif init == "signed_constant":
            v = np.where(u >= 0.5, std, -std)
        else:
            raise ValueError(f"unknown init {init!r}")
        out[start:start + n] = v
    return out


def permutation(seed: int, count: int) -> np.ndarray:
    """The seeded permutation used by ``fill="rand"``."""
    return np.argsort(stream_words(seed, _PERM_STREAM, 0, count), kind="stable")


@dataclass(frozen=True)
class Source:
    """One random vector of the bank: its stream, how many values are stored (``length``), how many
    the layers see after tiling/shuffling (``expanded``), and the fan-in that set its scale."""

    stream: int
    length: int
    expanded: int
    fan_in: int


@dataclass(frozen=True)
class Assignment:
    """Where one masked weight takes its values: the first ``numel`` of ``source``, times ``scale``."""

    source: str
    scale: float


def plan(config: PEMNConfig, shapes: list[tuple[int, ...]], fan_ins: list[int] | None = None
         ) -> tuple[dict[str, Source], list[Assignment]]:
    """Decide the bank's sources and each weight's assignment for a strategy (see the module doc).

    ``fan_ins`` gives each weight's fan-in by its layer type's rule (:mod:`pemn.registry`: ``shape[0]`` for
    transformers' ``Conv1D``); by default, torch's convention :func:`fan_in` of each shape.
    """
    if not shapes:
        raise ValueError("no weights to plan a prototype for")
    numels = [math.prod(s) for s in shapes]
    fans = [fan_in(s) for s in shapes] if fan_ins is None else [max(1, int(f)) for f in fan_ins]
    if len(fans) != len(shapes):
        raise ValueError(f"{len(fan_ins or [])} fan-ins for {len(shapes)} weights")
    strategy = STRATEGY_TABLE[config.strategy]
    owners = strategy.planner(shapes, numels)
    sources: dict[str, Source] = {}
    for i in sorted(set(owners)):
        length = stored_length(strategy, config.ratio, numels[i])
        sources[f"s{i}"] = Source(stream=i, length=length, expanded=numels[i], fan_in=fans[i])
    keeps = config.layer_keeps([tuple(s) for s in shapes])
    assignments = []
    for i, owner in enumerate(owners):
        assignments.append(Assignment(source=f"s{owner}", scale=slice_scale(config, fans[owner], fans[i], keeps[i])))
    return sources, assignments


def slice_scale(config: PEMNConfig, source_fan_in: int, fan_in: int, keep: float | None = None) -> float:
    """The factor a layer's prototype slice is multiplied by: ``sqrt(source_fan_in / fan_in)`` with
    ``config.rescale`` (the source was drawn for ``source_fan_in``), times ``1 / sqrt(keep)`` with
    ``config.keep_scale`` (``keep`` defaults to ``config.keep``; :func:`plan` passes the layer's share of it under
    ``keep_rule="erk"``, keep annealing the current one)."""
    scale = math.sqrt(source_fan_in / fan_in) if config.rescale else 1.0
    if config.keep_scale:
        scale /= math.sqrt(config.keep if keep is None else keep)
    return scale


def prototype_values(config: PEMNConfig, source: Source) -> np.ndarray:
    """The stored (un-tiled) values of a source, regenerated from the seed."""
    return random_values(config.seed, source.stream, source.length, source.fan_in, config.init)


def expand(config: PEMNConfig, source: Source, values: np.ndarray) -> np.ndarray:
    """Tile a source's stored values to the length layers see, and shuffle them for ``fill="rand"``."""
    out = values
    if source.expanded != source.length:
        out = np.tile(values, -(-source.expanded // source.length))[: source.expanded]
    if config.fill == "rand":
        out = out[permutation(config.seed, source.expanded)]
    return out


def fingerprint(prototypes: dict[str, np.ndarray]) -> str:
    """SHA-256 of a bank's stored values (see the module doc for the byte layout)."""
    h = hashlib.sha256()
    for name in sorted(prototypes):
        v = np.ascontiguousarray(prototypes[name], dtype="<f4")
        h.update(name.encode() + b"\0" + len(v).to_bytes(8, "little"))
        h.update(v.tobytes())
    return h.hexdigest()


class PrototypeBank(nn.Module):
    """The random values of a converted model, held once and shared by reference by every masked weight.

    Every :class:`~pemn.layers.MaskedWeight` registers this same module as its child, so ``.to()`` moves
    the single copy and every layer keeps viewing it. Its buffers are not persistent: the values are
    described by the config (and saved by :func:`pemn.save`), never by a state dict.
    """

    def __init__(self, config: PEMNConfig, sources: dict[str, Source],
                 prototypes: dict[str, np.ndarray] | None = None) -> None:
        super().__init__()
        self.config = config
        self.sources = dict(sources)
        self.global_topk = None  # a pemn.layers.GlobalTopK when config.scope == "global"
        if prototypes is None:
            prototypes = {n: prototype_values(config, s) for n, s in sources.items()}
        self._install(prototypes)

    def _install(self, prototypes: dict[str, np.ndarray]) -> None:
        if set(prototypes) != set(self.sources):
            raise ValueError(f"prototype sources {sorted(prototypes)} != expected {sorted(self.sources)}")
        self.sha256 = fingerprint(prototypes)
        # Keep the stored values only where the layers see something else (tiled or shuffled).
        self._stored: dict[str, np.ndarray] = {}
        for name, src in self.sources.items():
            values = np.asarray(prototypes[name], dtype=np.float32)
            if values.shape != (src.length,):
                raise ValueError(f"prototype {name} has shape {values.shape}, expected ({src.length},)")
            expanded = expand(self.config, src, values)
            if expanded is not values:
                self._stored[name] = values.copy()
            self.register_buffer(name, torch.from_numpy(expanded.copy()), persistent=False)

    def view(self, source: str, numel: int) -> torch.Tensor:
        """The first ``numel`` values layers see from ``source`` (a view: no copy)."""
        return self._buffers[source][:numel]

    @property
    def unique_values(self) -> int:
        """P: the number of stored prototype values."""
        return sum(s.length for s in self.sources.values())

    def prototypes(self) -> dict[str, np.ndarray]:
        """The stored values as float32 numpy arrays (what an artifact holds)."""
        out = {}
        for name, src in self.sources.items():
            if name in self._stored:
                out[name] = self._stored[name]
                continue
            buf = self._buffers[name]
            if buf.dtype == torch.float32:
                out[name] = buf[: src.length].detach().cpu().numpy()
            else:  # the model was cast (e.g. .half()): the exact values come from the seed
                out[name] = prototype_values(self.config, src)
        if fingerprint(out) != self.sha256:
            raise RuntimeError("the prototype no longer matches its fingerprint; was the bank modified?")
        return out

    def extra_repr(self) -> str:
        return f"strategy={self.config.strategy}, sources={len(self.sources)}, unique_values={self.unique_values}"

    def install_(self, prototypes: dict[str, np.ndarray]) -> None:
        """Replace the values in place (device, dtype and every layer's view are kept)."""
        device_dtype = {n: (b.device, b.dtype) for n, b in self._buffers.items()}
        self._install(prototypes)
        for name, (device, dtype) in device_dtype.items():
            self._buffers[name] = self._buffers[name].to(device=device, dtype=dtype)
