"""Fuzz the ``.pemn`` loader: mutate valid artifacts and check that every input either loads exactly what it
says or raises :class:`pemn.FormatError` -- never another exception, never a wrong model, never a model
half-changed by a failed load, never gigabytes of memory for a size the file merely declares.

    python benchmarks/fuzz_loader.py [--inputs 10000] [--seed 0] [--save-failures DIR] [--replay I]

Prints one JSON document. The inputs come from the base artifacts below (packed / entropy coding x values /
seed prototype storage; strategies rp, mask, mp, one_layer; layer and global scope; Conv/BatchNorm/Linear,
MultiheadAttention (packed and separate q/k/v projections) and the registry's ``tiny-cnn``; float32,
float16 and bfloat16 extras; format version 2: folded BatchNorms and int8 extras with their ``qparams``),
each input one to three mutations drawn from six families:

- ``raw``: truncation, bit flips, byte overwrites, insertions, deletions, appended garbage, an edited
  8-byte header length, a block spliced from another artifact. Never integrity-refreshed.
- ``container``: the safetensors JSON header (tensor entries' ``data_offsets`` / ``dtype`` / ``shape``,
  deleted / aliased / renamed / swapped entries, unknown keys, duplicate keys, a non-object header or
  ``__metadata__``, padding), the body left as it is.
- ``metadata``: every ``__metadata__`` field (format, format_version, coding, prototype_storage,
  prototype_sha256, the config JSON field by field), unknown and missing keys.
- ``index``: the zlib-compressed JSON index: manifest and dense entries field by field (shapes, huge
  counts, negative sizes, wrong dtypes and kinds, int8 group counts, fold entries, unknown keys), the
  version-2 ``meta`` object (fields edited, dropped, added, non-strings), reordered / dropped / duplicated entries,
  not JSON, not zlib, trailing data, truncated streams, deep nesting, rare zlib bombs.
- ``tensor``: swapped tensors, dropped and unknown tensors, dtypes changed (reinterpreted or cast),
  truncated / extended / reshaped / emptied tensors, random bytes inside the masks.
- ``foreign``: pickles (protocols 0-5), ``torch.save`` files (zip and legacy), a zip or gzip of the
  artifact, ``.npy``, JSON, text, random bytes, plain safetensors files -- all "renamed to .pemn".

Structural mutations (container, metadata, index, tensor) are integrity-refreshed with probability 0.8
(the SHA-256 recomputed as a writer would), so the checks behind the hash are what must fire.

Oracle. A ``FormatError`` (or subclass) is a pass if the model it was loading into is unchanged. A
successful load is a pass if (a) the input's content is identical to a valid artifact (its base, or another
base of the same architecture that a splice rebuilt) and the model gives that artifact's outputs bit for
bit, or (b) the loaded model's outputs equal the base's bit for bit, or -- for integrity-refreshed inputs
only, which a writer could legitimately produce (say, dense entries of equal shape swapped) -- (c) the
model holds exactly what the file says (every mask, dense tensor, the prototype and the config re-read from
the file and compared). Anything else -- another exception type, a wrong model, a changed model after an
error, a load over ``--timeout`` seconds, an unpickled marker -- is a failure and is listed
(``--save-failures DIR`` writes the inputs; ``--replay I`` rebuilds input I alone: every input has its own
generator, and safetensors' hash-ordered headers are canonicalised, so replays are byte-identical except
for ``torch.save`` inputs, which carry a random serialization id).

``--kind quant`` fuzzes the quantized-model files (``pemn train --quantize``, :mod:`pemn.training.quantfile`)
the same way: ten quantized bases (binary, ternary, int2, int4, int8, ptq-int4 and pruned Deep Compression
files; packed, entropy-coded and range-coded ``categorical`` codes), the raw, container, tensor and foreign
families plus their own metadata, index and codes / scales / extras mutations; a load that succeeds must give the
base's outputs or hold exactly what a second, plain decoder reads from the file.

Memory: the process's VmHWM (/proc/self/status) before and after the run and, where Linux lets the peak be
reset (``/proc/self/clear_refs``), each load's own peak above the RSS it started from. An 8 GiB
address-space limit (``--memory-limit-gib``) turns a runaway allocation into a MemoryError (a failure)
instead of exhausting the machine.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import hashlib
import io
import json
import math
import os
import pickle
import random
import resource
import signal
import sys
import tempfile
import time
import traceback
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import constriction
import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

import pemn
from pemn import artifact
from pemn import coding as mask_coding
from pemn.convert import find_bank, is_converted
from pemn.errors import FormatError
from pemn.taskfile import build_tasks
from pemn.training.models import create_model

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = "benchmarks/fuzz_loader.py"
REFRESH_PROBABILITY = 0.8
#: Of the index mutations; rare, since each bomb costs ~0.7 s and ~512 MiB (0 turns them off).
ZLIB_BOMB_PROBABILITY = 0.015

# --------------------------------------------------------------------------------------------- models


def _conv_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))


class AttnNet(nn.Module):
    """Linear embedding, MultiheadAttention (packed in-projection, or separate q/k/v when ``kdim`` is set),
    LayerNorm, Linear head."""

    def __init__(self, kdim: int | None = None) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.key = nn.Linear(4, kdim) if kdim else None
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True, kdim=kdim, vdim=kdim)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        k = self.key(x) if self.key is not None else h
        a, _ = self.attn(h, k, k, need_weights=False)
        return self.head(self.norm(h + a).mean(1))


def _tiny_cnn() -> nn.Module:
    return create_model("tiny-cnn", num_classes=10, in_channels=1, image_size=8)


def _normal_mlp() -> nn.Module:
    """A Linear layer of normally distributed weights: its int4 codes are peaked, so a quantized file range codes
    them (the ``categorical`` coding)."""
    model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 3))
    nn.init.normal_(model[0].weight, std=0.1)
    return model


MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "conv_bn_linear": (_conv_net, (5, 3, 4, 4)),
    "mha_packed": (AttnNet, (3, 5, 4)),
    "mha_separate_qkv": (lambda: AttnNet(kdim=6), (3, 5, 4)),
    "tiny_cnn": (_tiny_cnn, (4, 1, 8, 8)),
    "conv_bn16": (lambda: nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                        nn.Flatten(), nn.Linear(16 * 16, 4)), (5, 3, 4, 4)),
    "normal_mlp": (_normal_mlp, (5, 64)),
}

# (name, model, PEMNConfig kwargs, coding, prototype storage, extras: a dtype, "fold" or "fold+DTYPE")
BASE_SPECS: list[tuple[str, str, dict[str, Any], str, str, str | None]] = [
    ("conv-rp-packed-values", "conv_bn_linear", {"strategy": "rp", "ratio": 0.1}, "packed", "values", None),
    ("conv-mask-entropy-seed", "conv_bn_linear", {"strategy": "mask", "keep": 0.3, "seed": 3}, "entropy", "seed",
     None),
    ("conv-mp-rand-global-packed-seed", "conv_bn_linear",
     {"strategy": "mp", "fill": "rand", "scope": "global", "seed": 7}, "packed", "seed", None),
    ("conv-one_layer-entropy-values-fp16", "conv_bn_linear", {"strategy": "one_layer", "keep": 0.6}, "entropy",
     "values", "float16"),
    ("mha-rp-entropy-values", "mha_packed", {"strategy": "rp", "ratio": 0.2, "rescale": True}, "entropy", "values",
     None),
    ("mha_qkv-mask-global-packed-seed", "mha_separate_qkv", {"strategy": "mask", "scope": "global", "keep": 0.4},
     "packed", "seed", None),
    ("tinycnn-rp-global-entropy-seed", "tiny_cnn", {"strategy": "rp", "ratio": 0.05, "scope": "global"}, "entropy",
     "seed", None),
    ("tinycnn-one_layer-packed-values-bf16", "tiny_cnn", {"strategy": "one_layer", "init": "signed_constant"},
     "packed", "values", "bfloat16"),
    # format version 2
    ("conv-rp-packed-values-fold-int8", "conv_bn_linear", {"strategy": "rp", "ratio": 0.1}, "packed", "values",
     "fold+int8"),
    ("tinycnn-mask-entropy-seed-fold", "tiny_cnn", {"strategy": "mask", "keep": 0.4}, "entropy", "seed", "fold"),
    ("mha-rp-packed-values-int8", "mha_packed", {"strategy": "rp", "ratio": 0.2}, "packed", "values", "int8"),
    ("tinycnn-rp-global-entropy-values-fold-int8", "tiny_cnn", {"strategy": "rp", "ratio": 0.05, "scope": "global"},
     "entropy", "values", "fold+int8"),
    # format version 3: a folded norm stored row by row (a float16 scale of wide range, an int8 shift)
    ("conv16-rp-packed-values-fold-rows", "conv_bn16", {"strategy": "rp", "ratio": 0.1}, "packed", "values",
     "fold+int8+wide"),
    # format version 4: three tasks on one prototype, one with its own two-class head (extras "tasks[+DTYPE]")
    ("conv-mask-entropy-seed-tasks", "conv_bn_linear", {"strategy": "mask", "keep": 0.3}, "entropy", "seed", "tasks"),
    ("conv-rp-packed-values-tasks-int8", "conv_bn_linear", {"strategy": "rp", "ratio": 0.1}, "packed", "values",
     "tasks+int8"),
    # versions 3 and 4 with the index compressed against the first preset dictionary (every such file written
    # before issue 19; "+first-dictionary")
    ("tinycnn-rp-packed-values-fold-int8-first-dictionary", "tiny_cnn", {"strategy": "rp", "ratio": 0.05}, "packed",
     "values", "fold+int8+first-dictionary"),
    ("conv-mask-entropy-values-tasks-first-dictionary", "conv_bn_linear", {"strategy": "mask", "keep": 0.3},
     "entropy", "values", "tasks+first-dictionary"),
]


def fresh_model(kind: str) -> nn.Module:
    torch.manual_seed(0)
    return MODELS[kind][0]()


def run_model(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


@dataclass
class Base:
    name: str
    model: str
    data: bytes
    x: torch.Tensor
    expected: torch.Tensor  # the outputs of a model loaded from the unmutated artifact
    pristine: dict[str, torch.Tensor]  # a fresh model's state, to check a failed load changed nothing
    content: artifact.Artifact = field(repr=False, default=None)  # type: ignore[assignment]


def train_one_step(model: nn.Module, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One seeded SGD step on random inputs of ``kind``'s shape, so masks, weights and norm statistics leave
    their init; returns the batch (inputs, labels)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(*MODELS[kind][1], generator=g)
    out = model(x)
    y = torch.randint(0, out.shape[1], (out.shape[0],), generator=g)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    nn.functional.cross_entropy(out, y).backward()
    opt.step()
    return x, y


def build_base(name: str, kind: str, cfg: dict[str, Any], coding: str, storage: str, extras: str | None) -> Base:
    """Convert a fresh model, train it one step (masks and BatchNorm statistics move off their init), save it."""
    first_dictionary = (extras or "").endswith("+first-dictionary")
    extras = (extras or "").removesuffix("+first-dictionary") or None
    model = pemn.convert_(fresh_model(kind), pemn.PEMNConfig(**cfg))
    x, y = train_one_step(model, kind)
    if (extras or "").endswith("+wide"):  # running variances 0.01 .. 10: folded scales too spread for one int8 grid
        extras = extras.removesuffix("+wide")
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_var.copy_(torch.logspace(-2, 1, m.num_features))
    if (extras or "").startswith("tasks"):  # format version 4: more tasks, each trained one step
        extras = extras.removeprefix("tasks").removeprefix("+") or None
        pemn.add_task(model, "b")
        pemn.add_task(model, "two", num_classes=2, app={"note": "own head"})
        for task_name in ("b", "two"):
            with pemn.using_task(model, task_name):
                o = model(x)
                opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
                nn.functional.cross_entropy(o, y % o.shape[1]).backward()
                opt.step()
        data = canonical(artifact.encode(build_tasks(model, coding=coding, prototype=storage, extras_dtype=extras)))
    else:
        fold_norms = (extras or "").startswith("fold")
        dtype = (extras or "").removeprefix("fold").removeprefix("+") or None
        data = canonical(artifact.to_bytes(model, coding=coding, prototype=storage, extras_dtype=dtype,
                                           fold_norms=fold_norms))
    if first_dictionary:  # the same index, compressed against the dictionary of the first version 3 / 4 files
        written = artifact.parse(data)
        raw = written.tensors["index"].numpy().tobytes()
        text = zlib.decompressobj(zdict=artifact.INDEX_DICTIONARY).decompress(raw)
        deflater = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS, 9, zlib.Z_DEFAULT_STRATEGY,
                                    artifact.FIRST_INDEX_DICTIONARY)
        data = canonical(artifact.encode(written, index=deflater.compress(text) + deflater.flush()))
    x_eval = torch.randn(*MODELS[kind][1], generator=torch.Generator().manual_seed(2))
    loaded = artifact.apply(artifact.parse(data), fresh_model(kind))
    return Base(name, kind, data, x_eval, run_model(loaded, x_eval), fresh_model(kind).state_dict(),
                artifact.parse(data))


def build_bases() -> list[Base]:
    return [build_base(*spec) for spec in BASE_SPECS]


# ------------------------------------------------------------------------------------- byte plumbing


def split(data: bytes) -> tuple[Any, bytes]:
    """(header JSON, body) of a safetensors-shaped file; ValueError if it is not one."""
    n = int.from_bytes(data[:8], "little")
    if len(data) < 8 or n > len(data) - 8:
        raise ValueError("not a container")
    try:
        return json.loads(data[8:8 + n]), data[8 + n:]
    except (ValueError, RecursionError):
        raise ValueError("not a container") from None


def join(header: Any, body: bytes, *, raw: bytes | None = None, pad: bytes = b" ") -> bytes:
    h = raw if raw is not None else json.dumps(header, separators=(",", ":")).encode()
    h += pad * (-len(h) % 8)
    return len(h).to_bytes(8, "little") + h + body


def refresh_integrity(data: bytes) -> bytes | None:
    """``data`` with its integrity hash recomputed as a writer would, or None if it has no parsable
    container / string metadata to hash."""
    try:
        header, body = split(data)
        tensors = st_load(data)
    except Exception:
        return None
    if not isinstance(header, dict) or not isinstance(header.get("__metadata__"), dict):
        return None
    meta = header["__metadata__"]
    if not all(isinstance(v, str) for v in meta.values()):
        return None
    header = dict(header)
    header["__metadata__"] = {**meta, "integrity": artifact.integrity(meta, tensors)}
    return join(header, body)


def uint8(raw: bytes) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(raw, dtype=np.uint8).copy())


# ------------------------------------------------------------------------------------ interesting values


def interesting_int(rng: random.Random, near: int = 0) -> Any:
    pool = [0, 1, -1, 2, 7, 8, near, near - 1, near + 1, near * 2, near // 2, -near, 255, 256, 2**31 - 1, 2**31,
            2**32, 2**32 + 1, 2**40, 2**53, 2**62, 2**63 - 1, 2**63, 2**64, 2**64 + 7, -(2**63), 10**18, 10**30,
            10**400]
    r = rng.random()
    if r < 0.75:
        return rng.choice(pool)
    if r < 0.85:
        return rng.choice([1.5, float(near), 1e308, -0.0, float("inf") if rng.random() < 0.5 else float("nan")])
    return rng.choice(["1", "", None, True, False, [near], {"n": near}])


def interesting_shape(rng: random.Random, shape: list[int]) -> Any:
    n = math.prod(shape) if shape and all(isinstance(s, int) for s in shape) else 1
    choices: list[Any] = [
        [], [0], [-1], [n], [n, 1], [1, n], [n + 1], [max(n - 1, 0)], [2**62], [2**32, 2**32], [2**40, 1],
        [10**30], [n, 0], [0, 2**62], list(reversed(shape)), [*shape, 1], shape[:-1], [str(n)], [float(n)],
        [True] * max(len(shape), 1), None, n, [[n]], [2**63 - 1, 2**63 - 1, 2**63 - 1], [-n, -1],
    ]
    if len(shape) > 1:
        choices += [[shape[0] * 2, *shape[1:]], [shape[0], math.prod(shape[1:])]]
    choice = rng.choice(choices)
    if rng.random() < 0.3 and isinstance(choice, list) and choice:  # one element replaced by an odd value
        choice = list(choice)
        choice[rng.randrange(len(choice))] = interesting_int(rng, n)
    return choice


DTYPES = ["U8", "I8", "U16", "I16", "F16", "BF16", "F32", "F64", "I32", "U32", "I64", "U64", "BOOL", "F8_E4M3",
          "F8_E5M2", "C64", "Q8", "", "u8", "F32 ", 5, None, ["U8"]]
META_KEYS = ["format", "format_version", "pemn_version", "torch_version", "config", "coding", "prototype_storage",
             "prototype_sha256", "integrity"]
CONFIG_VALUES: dict[str, list[Any]] = {
    "strategy": ["rp", "mask", "mp", "one_layer", "dense", "", None, 1],
    "ratio": [None, 0.1, 0.2, 0.05, 0.5, 0.999, 1.0, 0.0, -0.1, 1e-300, 2.0, "0.1", float("nan")],
    "fill": ["copy", "rand", "RAND", None, 0],
    "keep": [0.5, 0.3, 0.4, 0.6, 1.0, 0.0, -0.5, 1.5, 1e-300, "0.5", None, float("nan"), 0.49999999999999994],
    "seed": [0, 1, 3, 7, -1, 2**63 - 1, 2**63, 2**64, 1.5, "0", None],
    "init": ["kaiming_normal", "kaiming_uniform", "signed_constant", "xavier", None],
    "rescale": [False, True, 0, 1, "true", None],
    "scope": ["layer", "global", "all", None],
    "targets": [None, ["Linear"], ["Conv2d"], [".*"], ["("], "Linear", [], [1], ["MultiheadAttention"]],
    "exclude": [None, ["Linear"], ["0"], ["("], [], "x"],
}


# --------------------------------------------------------------------------------------------- mutations


@dataclass
class Input:
    data: bytes
    base: Base
    steps: list[str]
    refreshed: bool = False


Mutator = Callable[[random.Random, bytes, "list[Base]"], tuple[bytes, str]]


def _pos(rng: random.Random, data: bytes) -> int:
    """A position biased towards the header (the first ~10 % of these small files)."""
    if not data:
        return 0
    try:
        n = 8 + int.from_bytes(data[:8], "little")
    except ValueError:
        n = len(data)
    if rng.random() < 0.4 and 0 < n <= len(data):
        return rng.randrange(min(n, len(data)))
    return rng.randrange(len(data))


# raw --------------------------------------------------------------------------------------------


def m_truncate(rng: random.Random, data: bytes, bases: list[Base]) -> tuple[bytes, str]:
    cut = rng.choice([_pos(rng, data), len(data) - rng.randint(1, 16), rng.randint(0, 16)])
    cut = max(0, min(cut, len(data) - 1))
    return data[:cut], f"truncate to {cut} of {len(data)} bytes"


def m_bitflip(rng: random.Random, data: bytes, bases: list[Base]) -> tuple[bytes, str]:
    b = bytearray(data)
    flips = []
    for _ in range(rng.choice([1, 1, 1, 2, 3, 8])):
        if not b:
            break
        pos, bit = _pos(rng, b), rng.randrange(8)
        b[pos] ^= 1 << bit
        flips.append((pos, bit))
    return bytes(b), f"bit flips {flips}"


def m_byteset(rng: random.Random, data: bytes, bases: list[Base]) -> tuple[bytes, str]:
    b = bytearray(data)
    if not b:
        return data, "byteset on empty"
    pos = _pos(rng, b)
    value = rng.choice([0, 0xFF, 0x7F, 0x80, 0x20, 0x22, 0x7B, 0x7D, 0x2C, 0x5B, 0x39, rng.randrange(256)])
    count = rng.choice([1, 1, 2, 4, 16])
    b[pos:pos + count] = bytes([value]) * len(b[pos:pos + count])
    return bytes(b), f"set {count} byte(s) at {pos} to 0x{value:02x}"


def m_insert_delete(rng: random.Random, data: bytes, bases: list[Base]) -> tuple[bytes, str]:
    pos, n = _pos(rng, data), rng.choice([1, 2, 3, 7, 8, 16])
    if rng.random() < 0.5:
        return data[:pos] + rng.randbytes(n) + data[pos:], f"insert {n} random bytes at {pos}"
    return data[:pos] + data[pos + n:], f"delete {n} bytes at {pos}"


def m_append(rng: random.Random, data: bytes, bases: list[Base]) -> tuple[bytes, str]:
    tail = rng.choice([b"\0", b"\0" * 8, rng.randbytes(rng.randint(1, 4096)), data[:64], b" " * 8])
    return data + tail, f"append {len(tail)} bytes"


def m_header_length(rng: random.Random, data: bytes, bases: list[Base]) -> tuple[bytes, str]:
    n = int.from_bytes(data[:8], "little") if len(data) >= 8 else 0
    value = rng.choice([0, 1, 2, n - 1, n + 1, n - 8, n + 8, n * 2, len(data), len(data) - 8, len(data) - 7,
                        2**31, 2**32, 64 << 20, (64 << 20) + 1, 2**63, 2**64 - 1, rng.randrange(2**64)]) % 2**64
    return value.to_bytes(8, "little") + data[8:], f"header length {n} -> {value}"


def m_splice(rng: random.Random, data: bytes, bases: list[Base]) -> tuple[bytes, str]:
    other = rng.choice(bases)
    if not data:
        return other.data[:16], "splice into empty"
    start = _pos(rng, data)
    n = rng.choice([4, 16, 64, 256, len(other.data)])
    chunk = other.data[start:start + n]
    return data[:start] + chunk + data[start + len(chunk):], f"splice {len(chunk)} bytes of {other.name} at {start}"


def m_copy_block(rng: random.Random, data: bytes, bases: list[Base]) -> tuple[bytes, str]:
    if len(data) < 2:
        return data, "copy block on tiny input"
    a, b = rng.randrange(len(data)), rng.randrange(len(data))
    n = rng.choice([1, 4, 8, 32])
    chunk = data[a:a + n]
    return data[:b] + chunk + data[b + len(chunk):], f"copy {len(chunk)} bytes from {a} to {b}"


# container --------------------------------------------------------------------------------------


def _tensor_names(header: dict[str, Any]) -> list[str]:
    return [k for k in header if k != "__metadata__"]


def m_container(rng: random.Random, data: bytes, bases: list[Base]) -> tuple[bytes, str]:
    try:
        header, body = split(data)
    except ValueError:
        return m_bitflip(rng, data, bases)
    if not isinstance(header, dict):
        return join([header], body), "header wrapped in a list"
    names = _tensor_names(header)
    header = copy.deepcopy(header)
    op = rng.choice(["offsets", "offsets", "dtype", "dtype", "shape", "shape", "delete", "alias", "rename", "swap",
                     "unknown_key", "extra_entry", "entry_not_object", "duplicate_key", "header_not_object",
                     "metadata_not_object", "metadata_value_type", "padding"])
    name = rng.choice(names) if names else "masks"
    entry = header.get(name) if isinstance(header.get(name), dict) else {}
    if op == "offsets" and entry:
        begin, end = entry.get("data_offsets", [0, 0])
        which = rng.choice(["begin", "end", "both", "swap", "other", "len"])
        if which == "begin":
            entry["data_offsets"] = [interesting_int(rng, begin), end]
        elif which == "end":
            entry["data_offsets"] = [begin, interesting_int(rng, end)]
        elif which == "both":
            entry["data_offsets"] = [interesting_int(rng, begin), interesting_int(rng, end)]
        elif which == "swap":
            entry["data_offsets"] = [end, begin]
        elif which == "other":
            entry["data_offsets"] = copy.deepcopy(header[rng.choice(names)]["data_offsets"])
        else:
            entry["data_offsets"] = rng.choice([[begin], [begin, end, end], [], None, "0,1", {"0": 1}])
        return join(header, body), f"container: {name}.data_offsets {which} -> {entry['data_offsets']}"
    if op == "dtype" and entry:
        entry["dtype"] = rng.choice(DTYPES)
        return join(header, body), f"container: {name}.dtype -> {entry['dtype']!r}"
    if op == "shape" and entry:
        entry["shape"] = interesting_shape(rng, list(entry.get("shape", [1])))
        return join(header, body), f"container: {name}.shape -> {str(entry['shape'])[:80]}"
    if op == "delete" and names:
        del header[name]
        return join(header, body), f"container: entry {name} deleted"
    if op == "alias" and entry:
        alias = rng.choice(["masks", "prototype", "index", "params.float32", "buffers.int64", "zzz", "prototype/0"])
        header[alias] = copy.deepcopy(entry)
        return join(header, body), f"container: {alias} aliases {name}'s bytes"
    if op == "rename" and names:
        new = rng.choice(["Masks", "mask", "index ", "", "__metadata__", "params.float64", "buffers.float16",
                          "params.", "\u00e9", "x" * 300])
        header[new] = header.pop(name)
        return join(header, body), f"container: {name} renamed {new[:20]!r}"
    if op == "swap" and len(names) > 1:
        a, b = rng.sample(names, 2)
        header[a], header[b] = header[b], header[a]
        return join(header, body), f"container: entries {a} and {b} swapped"
    if op == "unknown_key" and entry:
        entry[rng.choice(["extra", "dtype2", "offsets", ""])] = rng.choice([1, "x", None, [1, 2]])
        return join(header, body), f"container: unknown key in {name}"
    if op == "extra_entry":
        header[rng.choice(["zzz", "masks2", "params.float32", "a" * 64])] = {
            "dtype": rng.choice(DTYPES[:12]), "shape": interesting_shape(rng, [4]),
            "data_offsets": [interesting_int(rng, 0), interesting_int(rng, 4)]}
        return join(header, body), "container: extra tensor entry"
    if op == "entry_not_object":
        header[name] = rng.choice([3, "x", None, [], [1, 2, 3], True])
        return join(header, body), f"container: {name} is {header[name]!r}"
    if op == "duplicate_key" and names:
        text = json.dumps(header, separators=(",", ":"))
        dup = rng.choice([name, "__metadata__"])
        value = rng.choice([json.dumps(header.get(dup)), "{}", "1", json.dumps({"format": "pemn"})])
        raw = (text[:-1] + f',"{dup}":{value}' + "}").encode()
        return join(None, body, raw=raw), f"container: duplicate key {dup}"
    if op == "header_not_object":
        value = rng.choice([[], "x", 1, None, [header]])
        return join(value, body), f"container: header is {type(value).__name__}"
    if op == "metadata_not_object":
        header["__metadata__"] = rng.choice([[], "pemn", 1, None, [header.get("__metadata__")]])
        return join(header, body), "container: __metadata__ not an object"
    if op == "metadata_value_type" and isinstance(header.get("__metadata__"), dict):
        key = rng.choice(META_KEYS)
        header["__metadata__"][key] = rng.choice([1, None, [], {}, 1.5, True, ["pemn"]])
        return join(header, body), f"container: __metadata__.{key} -> non-string"
    if op == "padding":
        text = json.dumps(header, separators=(",", ":")).encode()
        pad = rng.choice([b" ", b"\0", b"\n", b"x", b"\t"])
        return join(None, body, raw=text + pad * rng.randint(1, 16), pad=pad), f"container: padding {pad!r}"
    return m_bitflip(rng, data, bases)


# parts: metadata, index, tensors ----------------------------------------------------------------


@dataclass
class Parts:
    meta: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    index_raw: bytes | None


def take_apart(data: bytes) -> Parts | None:
    try:
        header, _ = split(data)
        tensors = {k: v.clone() for k, v in sorted(st_load(data).items())}
    except Exception:
        return None
    if not isinstance(header, dict) or not isinstance(header.get("__metadata__"), dict):
        return None
    index = tensors.get("index")
    raw = index.numpy().tobytes() if index is not None and index.dtype == torch.uint8 else None
    return Parts(dict(header["__metadata__"]), tensors, raw)


def canonical(data: bytes) -> bytes:
    """``data`` (written by safetensors) with its header keys sorted: safetensors writes the metadata in
    hash-map order, which differs between processes, and an input must be rebuilt identically by ``--replay``."""
    header, body = split(data)
    meta = header.pop("__metadata__", None)
    ordered = {} if meta is None else {"__metadata__": dict(sorted(meta.items()))}
    ordered.update(sorted(header.items()))
    return join(ordered, body)


def put_together(p: Parts) -> bytes:
    meta = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in p.meta.items()}
    return canonical(st_save(p.tensors, metadata=meta))


def m_metadata(rng: random.Random, data: bytes, bases: list[Base]) -> tuple[bytes, str]:
    p = take_apart(data)
    if p is None:
        return m_container(rng, data, bases)
    op = rng.choice(["config", "config", "config", "config", "field", "field", "delete", "add"])
    if op == "config":
        try:
            cfg = json.loads(p.meta.get("config", "{}"))
        except (ValueError, TypeError, RecursionError):
            cfg = {}
        which = rng.choice([*CONFIG_VALUES, "unknown", "drop", "not_object", "text", "deep", "huge"])
        if which in CONFIG_VALUES and isinstance(cfg, dict):
            cfg[which] = rng.choice(CONFIG_VALUES[which])
            text = json.dumps(cfg)
        elif which == "unknown" and isinstance(cfg, dict):
            cfg[rng.choice(["extra", "Strategy", "version"])] = 1
            text = json.dumps(cfg)
        elif which == "drop" and isinstance(cfg, dict) and cfg:
            cfg.pop(rng.choice(list(cfg)))
            text = json.dumps(cfg)
        elif which == "not_object":
            text = json.dumps(rng.choice([[cfg], 1, "rp", None]))
        elif which == "deep":
            text = "[" * 100_000
        elif which == "huge":
            text = json.dumps({**cfg, "seed": 0})[:-1] + ', "ratio": ' + "9" * 5000 + "}" if isinstance(cfg, dict) \
                else "1" * 5000
        else:
            text = rng.choice(["", "{", "not json", "{\"strategy\": \"rp\",}", "NaN"])
        p.meta["config"] = text
        return put_together(p), f"metadata: config {which} -> {text[:80]!r}"
    if op == "field":
        key = rng.choice(["format", "format_version", "coding", "prototype_storage", "prototype_sha256",
                          "pemn_version", "torch_version", "integrity"])
        values = {
            "format": ["pemn", "PEMN", "pemn2", "", "pt"],
            "format_version": ["1", "2", "3", "0", "01", "-1", "1.0", "", "9" * 10, "\u0661", "99999999999"],
            "coding": ["packed", "entropy", "zip", "", "PACKED"],
            "prototype_storage": ["values", "seed", "none", ""],
            "prototype_sha256": ["0" * 64, "", "f" * 63, p.meta.get("prototype_sha256", "")[::-1]],
            "pemn_version": ["0.0.1", "99.0", ""], "torch_version": ["1.0", ""],
            "integrity": ["", "0" * 64, "x"],
        }[key]
        p.meta[key] = rng.choice(values)
        return put_together(p), f"metadata: {key} -> {p.meta[key]!r}"
    if op == "delete" and p.meta:
        key = rng.choice(list(p.meta))
        del p.meta[key]
        return put_together(p), f"metadata: {key} deleted"
    key = rng.choice(["note", "manifest", "integrity2", "x" * 200, ""])
    p.meta[key] = rng.choice(["1", "[]", "x" * 1000, ""])
    return put_together(p), f"metadata: unknown key {key[:20]!r} added"


def _index_json(p: Parts) -> Any:
    """The decoded index, or None (never inflates more than 1 MiB: the input may already be a zlib bomb)."""
    try:
        raw = p.index_raw or b""
        zdict = artifact.index_dictionary(raw) if raw[:1] and raw[0] & 0x0F == 8 else None  # version 3's preset
        inflater = zlib.decompressobj(zdict=zdict) if zdict is not None else zlib.decompressobj()
        text = inflater.decompress(raw, 1 << 20)
        return None if inflater.unconsumed_tail else json.loads(text)
    except Exception:
        return None


def _set_index(p: Parts, index: Any, *, text: bytes | None = None) -> None:
    raw = text if text is not None else json.dumps(index, separators=(",", ":")).encode()
    if p.meta.get("format_version") in ("3", "4"):  # recompressed as the format asks, so the edit reaches the checks
        deflater = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS, 9, zlib.Z_DEFAULT_STRATEGY,
                                    artifact.INDEX_DICTIONARY)
        p.tensors["index"] = uint8(deflater.compress(raw) + deflater.flush())
    else:
        p.tensors["index"] = uint8(zlib.compress(raw, 9))


def m_index(rng: random.Random, data: bytes, bases: list[Base]) -> tuple[bytes, str]:
    p = take_apart(data)
    index = _index_json(p) if p is not None else None
    if p is None or not isinstance(index, dict):
        return m_container(rng, data, bases)
    manifest, dense = index.get("manifest"), index.get("dense")
    tasks = index.get("tasks")
    task: Any = None
    if isinstance(tasks, list) and tasks:  # format version 4: edit one task's manifest or dense list, or its entry
        task = rng.choice(tasks)
        if isinstance(task, dict):
            manifest, dense = task.get("manifest"), task.get("dense")
    op = rng.choice(["manifest_field"] * 4 + ["dense_field"] * 3 + ["manifest_list", "dense_list", "top", "raw", "raw"]
                    + (["meta"] * 2 if "meta" in index else []) + (["task"] * 4 if "tasks" in index else []))
    if rng.random() < ZLIB_BOMB_PROBABILITY:
        op = "bomb"
    i = rng.randrange(len(manifest)) if isinstance(manifest, list) and manifest else 0
    if op == "manifest_field" and isinstance(manifest, list) and manifest and isinstance(manifest[i], dict):
        e = manifest[i]
        key = rng.choice(["name", "shape", "kept", "bytes", "kept", "bytes", "extra", "drop"])
        if key == "name":
            e["name"] = rng.choice([m.get("name") for m in manifest if isinstance(m, dict)]
                                   + ["", "nope.weight", "0", 5, None, "attn"])
        elif key == "shape":
            e["shape"] = interesting_shape(rng, list(e.get("shape", [1])))
        elif key in ("kept", "bytes"):
            e[key] = interesting_int(rng, int(e.get(key, 0)) if isinstance(e.get(key), int) else 0)
            if key == "kept" and rng.random() < 0.3:
                e[key] = int(e[key]) + rng.choice([-1, 1]) if isinstance(e[key], int) and e[key] < 2**70 else e[key]
        elif key == "extra":
            e["extra"] = 1
        else:
            e.pop(rng.choice(list(e)), None)
        _set_index(p, index)
        return put_together(p), f"index: manifest[{i}].{key} -> {str(e.get(key))[:60]}"
    j = rng.randrange(len(dense)) if isinstance(dense, list) and dense else 0
    if op == "dense_field" and isinstance(dense, list) and dense and isinstance(dense[j], list) and len(dense[j]) > 3:
        i, e = j, dense[j]
        pos = rng.randrange(6)
        if pos == 0:
            e[0] = rng.choice([d[0] for d in dense if isinstance(d, list) and d] + ["", "nope", 1, None])
        elif pos == 1:
            e[1] = rng.choice(["param", "buffer", "fold", "fold.scale", "fold.shift", "params", "", None])
        elif pos == 2:
            e[2] = rng.choice(["float32", "float16", "bfloat16", "float64", "int64", "uint8", "bool", "int8", "bogus",
                               None])
        elif pos == 3:
            e[3] = interesting_shape(rng, list(e[3]) if isinstance(e[3], list) else [1])
        elif pos == 4 and len(e) == 5:  # int8 groups
            e[4] = rng.choice([0, 1, 2, -1, e[4] + 1, e[4] - 1, True, 2**40, "1", None, 1.0])
        elif rng.random() < 0.5:
            e.append(rng.choice([1, "x", 2, True]))
        else:
            e.pop()
        _set_index(p, index)
        return put_together(p), f"index: dense[{i}] field {pos} edited -> {str(e)[:80]}"
    if op == "meta" and isinstance(index.get("meta"), dict):
        meta = index["meta"]
        how = rng.choice(["field", "field", "drop", "add", "non_string", "not_object", "container_key"])
        key = rng.choice(sorted(meta) or ["config"])
        if how == "field":
            meta[key] = rng.choice(["", "x", "packed", "entropy", "values", "seed", "{}", "0" * 64,
                                    meta.get(key, "")[::-1]])
        elif how == "drop":
            meta.pop(key, None)
        elif how == "add":
            meta[rng.choice(["note", "manifest", "x" * 50])] = "1"
        elif how == "non_string":
            meta[key] = rng.choice([1, None, [], {}])
        elif how == "container_key":
            meta[rng.choice(["format", "format_version", "integrity"])] = rng.choice(["pemn", "2", "1", ""])
        else:
            index["meta"] = rng.choice([[], "x", None, 1])
        _set_index(p, index)
        return put_together(p), f"index: meta {how} {key}"
    if op == "task":
        how = rng.choice(["name", "classes", "app", "drop_key", "extra_key", "base", "head", "tasks_list"])
        if how == "name" and isinstance(task, dict):
            task["name"] = rng.choice([t.get("name") for t in tasks if isinstance(t, dict)] + ["", "a b", 5, None,
                                                                                                "x" * 200, "b"])
        elif how == "classes" and isinstance(task, dict):
            task["classes"] = rng.choice([None, 0, 1, 2, 3, 4, -1, True, "2", 2**40, 1.5])
        elif how == "app" and isinstance(task, dict):
            task["app"] = rng.choice([{}, [], "x", None, {"a": 1}, {"note": [1] * 3}])
        elif how == "drop_key" and isinstance(task, dict) and task:
            task.pop(rng.choice(sorted(task)))
        elif how == "extra_key" and isinstance(task, dict):
            task[rng.choice(["bytes", "meta", "x"])] = 1
        elif how == "base" and isinstance(index.get("base"), list) and index["base"]:
            b = index["base"]
            choice = rng.randrange(5)
            if choice == 0:
                b.pop(rng.randrange(len(b)))
            elif choice == 1:
                b.append(copy.deepcopy(rng.choice(b)))
            elif choice == 2:
                b.reverse()
            elif choice == 3 and isinstance(b[0], list) and len(b[0]) == 2:
                b[0][1] = interesting_shape(rng, list(b[0][1]) if isinstance(b[0][1], list) else [1])
            else:
                index["base"] = rng.choice([[], {}, None, "x"])
        elif how == "head":
            index["head"] = rng.choice([None, "", "0", "1", "5", "nope", 3, []])
        else:
            how = "tasks_list " + rng.choice(["reverse", "drop", "duplicate", "empty", "not_list"])
            if how.endswith("reverse"):
                tasks.reverse()
            elif how.endswith("drop"):
                tasks.pop(rng.randrange(len(tasks)))
            elif how.endswith("duplicate"):
                tasks.append(copy.deepcopy(rng.choice(tasks)))
            elif how.endswith("empty"):
                tasks.clear()
            else:
                index["tasks"] = rng.choice([{}, "x", None])
        _set_index(p, index)
        return put_together(p), f"index: task {how}"
    if op in ("manifest_list", "dense_list"):
        key = "manifest" if op == "manifest_list" else "dense"
        lst = index.get(key) if task is None else (task if isinstance(task, dict) else {}).get(key)
        how = rng.choice(["reverse", "drop", "duplicate", "empty", "not_list", "shuffle", "swap_equal_shapes"])
        if isinstance(lst, list) and lst:
            if how == "reverse":
                lst.reverse()
            elif how == "drop":
                lst.pop(rng.randrange(len(lst)))
            elif how == "duplicate":
                lst.append(copy.deepcopy(rng.choice(lst)))
            elif how == "empty":
                lst.clear()
            elif how == "shuffle":
                rng.shuffle(lst)
            elif how == "swap_equal_shapes":
                _swap_equal_shapes(rng, lst)
            else:
                index[key] = rng.choice([{}, "x", None, 1])
        _set_index(p, index)
        return put_together(p), f"index: {key} {how}"
    if op == "top":
        how = rng.choice(["extra_key", "drop_manifest", "drop_dense", "drop_meta", "list", "string", "deep", "bigint",
                          "nan"])
        text = None
        if how == "extra_key":
            index["extra"] = []
        elif how == "drop_manifest":
            index.pop("manifest", None)
        elif how == "drop_dense":
            index.pop("dense", None)
        elif how == "drop_meta":
            index.pop("meta", None)
        elif how == "list":
            index = [index]
        elif how == "string":
            index = "manifest"
        elif how == "deep":
            text = b"[" * 200_000
        elif how == "bigint":
            text = b'{"manifest":[{"name":"x","shape":[' + b"9" * 5000 + b'],"kept":1,"bytes":1}],"dense":[]}'
        else:
            text = b'{"manifest":[{"name":"0.weight","shape":[NaN],"kept":Infinity,"bytes":-Infinity}],"dense":[]}'
        _set_index(p, index, text=text)
        return put_together(p), f"index: top-level {how}"
    if op == "raw":
        raw = p.index_raw or b""
        how = rng.choice(["not_zlib", "truncated", "trailing", "flip", "raw_deflate", "gzip", "empty", "not_json"])
        if how == "not_zlib":
            new = json.dumps(index).encode()
        elif how == "truncated":
            new = raw[:rng.randrange(max(len(raw), 1))]
        elif how == "trailing":
            new = raw + rng.choice([b"\0", raw, b"garbage"])
        elif how == "flip":
            b = bytearray(raw)
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
            new = bytes(b)
        elif how == "raw_deflate":
            c = zlib.compressobj(9, zlib.DEFLATED, -15)
            new = c.compress(json.dumps(index).encode()) + c.flush()
        elif how == "gzip":
            new = gzip.compress(json.dumps(index).encode(), mtime=0)
        elif how == "empty":
            new = b""
        else:
            new = zlib.compress(rng.choice([b"", b"not json", b"\xff\xfe", b"{}", b"[]", b"null"]))
        p.tensors["index"] = uint8(new)
        return put_together(p), f"index: raw {how}"
    # a zlib bomb: a small stream inflating past the loader's cap
    size = rng.choice([artifact._MAX_INDEX + 1, 1 << 30])
    p.tensors["index"] = uint8(zlib_stream(b"", b"\0", size))
    return put_together(p), f"index: zlib bomb inflating to {size} bytes"


def _swap_equal_shapes(rng: random.Random, lst: list[Any]) -> None:
    """Swap two entries with the same shape (a reinterpretation a writer could legitimately produce)."""
    def shape(e: Any) -> Any:
        return json.dumps(e.get("shape") if isinstance(e, dict) else e[3] if isinstance(e, list) and len(e) > 3 else 0)
    groups: dict[str, list[int]] = {}
    for i, e in enumerate(lst):
        groups.setdefault(shape(e), []).append(i)
    pairs = [g for g in groups.values() if len(g) > 1]
    if pairs:
        i, j = rng.sample(rng.choice(pairs), 2)
        lst[i], lst[j] = lst[j], lst[i]
    elif len(lst) > 1:
        lst[0], lst[-1] = lst[-1], lst[0]


def zlib_stream(head: bytes, fill: bytes, size: int) -> bytes:
    """A valid zlib stream of ``head`` then ``fill`` up to ``size`` bytes, built without holding them."""
    block = fill * (1 << 20)
    count, rest = divmod(size - len(head), len(block))
    c = zlib.compressobj(9)
    first = c.compress(head) + c.flush(zlib.Z_FULL_FLUSH)
    segment = c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)
    adler = zlib.adler32(head)
    for _ in range(count):
        adler = zlib.adler32(block, adler)
    adler = zlib.adler32(block[:rest], adler)
    return first + segment * count + (c.compress(block[:rest]) + c.flush())[:-4] + adler.to_bytes(4, "big")


TENSOR_NAMES = ["masks", "prototype", "index", "params.float32", "buffers.int64", "buffers.float32", "tasks.0.masks",
                "tasks.1.masks", "tasks.2.params.float32", "tasks.3.masks", "tasks.0.qparams", "tasks.x.masks",
                "params.float16", "params.bfloat16", "buffers.float16", "buffers.bfloat16", "qparams", "folds.int8",
                "folds.float32", "params.int8", "buffers.int8"]
CAST_DTYPES = [torch.uint8, torch.int8, torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int64,
               torch.int32, torch.bool, torch.int16]


def m_tensor(rng: random.Random, data: bytes, bases: list[Base]) -> tuple[bytes, str]:
    p = take_apart(data)
    if p is None or not p.tensors:
        return m_container(rng, data, bases)
    names = list(p.tensors)
    name = rng.choice(names)
    t = p.tensors[name]
    op = rng.choice(["swap", "swap", "drop", "unknown", "view", "cast", "truncate", "extend", "reshape", "empty",
                     "mask_bytes", "mask_bytes", "replace_from_other"])
    if op == "swap" and len(names) > 1:
        a, b = rng.sample(names, 2)
        p.tensors[a], p.tensors[b] = p.tensors[b], p.tensors[a]
        return put_together(p), f"tensor: {a} <-> {b}"
    if op == "drop":
        del p.tensors[name]
        return put_together(p), f"tensor: {name} dropped"
    if op == "unknown":
        new = rng.choice([*TENSOR_NAMES, "zzz", "params.int8", "buffers.float64", "params.bool", "prototype/0"])
        p.tensors[new] = rng.choice([torch.zeros(3), torch.arange(6, dtype=torch.uint8), torch.ones(2, 2),
                                     torch.zeros(0), torch.tensor([True]), torch.arange(4, dtype=torch.int64)])
        return put_together(p), f"tensor: {new} added/replaced"
    if op == "view":
        dtype = rng.choice(CAST_DTYPES)
        flat = t.reshape(-1).contiguous()
        try:
            p.tensors[name] = flat.view(torch.uint8).view(dtype)
        except RuntimeError:
            return put_together(p), f"tensor: {name} view as {dtype} impossible (no change)"
        return put_together(p), f"tensor: {name} reinterpreted as {dtype}"
    if op == "cast":
        dtype = rng.choice(CAST_DTYPES)
        p.tensors[name] = t.to(dtype)
        return put_together(p), f"tensor: {name} cast to {dtype}"
    if op == "truncate" and t.numel():
        n = rng.choice([t.numel() - 1, t.numel() // 2, 1, 0])
        p.tensors[name] = t.reshape(-1)[:n].clone()
        return put_together(p), f"tensor: {name} truncated to {n}"
    if op == "extend":
        n = rng.choice([1, 2, 8, 1000])
        p.tensors[name] = torch.cat([t.reshape(-1), torch.zeros(n, dtype=t.dtype)])
        return put_together(p), f"tensor: {name} extended by {n}"
    if op == "reshape" and t.numel() > 1:
        n = t.numel()
        shape = rng.choice([(n, 1), (1, n), (1, 1, n)] + ([(2, n // 2)] if n % 2 == 0 else []))
        p.tensors[name] = t.reshape(shape)
        return put_together(p), f"tensor: {name} reshaped to {shape}"
    if op == "empty":
        p.tensors[name] = torch.zeros(0, dtype=t.dtype)
        return put_together(p), f"tensor: {name} emptied"
    if op == "mask_bytes" and "masks" in p.tensors and p.tensors["masks"].numel():
        m = p.tensors["masks"].clone()
        i = rng.randrange(m.numel())
        n = rng.choice([1, 1, 4, m.numel()])
        m[i:i + n] = uint8(rng.randbytes(len(m[i:i + n])))
        p.tensors["masks"] = m
        return put_together(p), f"tensor: masks[{i}:{i + n}] randomised"
    if op == "replace_from_other":
        other = take_apart(rng.choice(bases).data)
        if other is not None and name in other.tensors:
            p.tensors[name] = other.tensors[name]
            return put_together(p), f"tensor: {name} taken from another artifact"
    return put_together(p), "tensor: no change"


# foreign ----------------------------------------------------------------------------------------


class _Marker:
    """Unpickling it would create a file (it must never happen)."""

    path = os.path.join(tempfile.gettempdir(), "pemn-fuzz-UNPICKLED-marker")

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


def m_foreign(rng: random.Random, data: bytes, bases: list[Base]) -> tuple[bytes, str]:
    kind = rng.choice(["pickle", "pickle", "torch_zip", "torch_legacy", "zip", "gzip", "npy", "json", "text", "random",
                       "empty", "safetensors", "safetensors_meta", "pickle_prefix", "zip_suffix"])
    state = {"w": [1.0, 2.0], "evil": _Marker()}
    if kind == "pickle":
        proto = rng.randrange(6)
        return pickle.dumps(state, protocol=proto), f"foreign: pickle protocol {proto}"
    if kind in ("torch_zip", "torch_legacy"):  # (torch.save writes a random serialization id: not replayable)
        buf = io.BytesIO()
        torch.save({**state, "t": torch.ones(2)}, buf, _use_new_zipfile_serialization=kind == "torch_zip")
        return buf.getvalue(), f"foreign: torch.save ({kind})"
    if kind == "zip":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr(zipfile.ZipInfo("model.pemn", date_time=(2024, 1, 1, 0, 0, 0)), data)
        return buf.getvalue(), "foreign: zip of the artifact"
    if kind == "gzip":
        return gzip.compress(data, mtime=0), "foreign: gzip of the artifact"
    if kind == "npy":
        buf = io.BytesIO()
        np.save(buf, np.arange(rng.randint(0, 100)))
        return buf.getvalue(), "foreign: npy"
    if kind == "json":
        return json.dumps({"format": "pemn", "format_version": "1"}).encode(), "foreign: json"
    if kind == "text":
        return b"this is not a model\n" * rng.randint(1, 50), "foreign: text"
    if kind == "random":
        return rng.randbytes(rng.choice([1, 9, 10, 64, 4096])), "foreign: random bytes"
    if kind == "empty":
        return b"", "foreign: empty"
    if kind == "safetensors":
        return st_save({"weight": torch.ones(3, 2), "bias": torch.zeros(3)}), "foreign: safetensors, no metadata"
    if kind == "safetensors_meta":
        return st_save({"weight": torch.ones(3)}, metadata={"format": rng.choice(["pt", "pemn"])}), \
            "foreign: safetensors with foreign metadata"
    if kind == "pickle_prefix":
        return pickle.dumps(state, protocol=2) + data, "foreign: a pickle followed by the artifact"
    return data + pickle.dumps(state, protocol=2), "foreign: the artifact followed by a pickle"


FAMILIES: dict[str, tuple[float, Mutator, bool]] = {
    # name: (weight, mutator, may be integrity-refreshed)
    "raw": (0.30, lambda r, d, b: r.choice([m_truncate, m_bitflip, m_bitflip, m_byteset, m_insert_delete, m_append,
                                            m_header_length, m_splice, m_copy_block])(r, d, b), False),
    "container": (0.17, m_container, True),
    "metadata": (0.15, m_metadata, True),
    "index": (0.15, m_index, True),
    "tensor": (0.17, m_tensor, True),
    "foreign": (0.06, m_foreign, False),
}


def make_input(seed: int, i: int, bases: list[Base],
               table: dict[str, tuple[float, Mutator, bool]] | None = None) -> tuple[Input, str]:
    """Input ``i`` of the run with ``seed`` (each input has its own generator, so any one can be replayed)."""
    return mutate(random.Random(hashlib.sha256(f"{seed}:{i}".encode()).digest()), bases, table)


def mutate(rng: random.Random, bases: list[Base],
           table: dict[str, tuple[float, Mutator, bool]] | None = None) -> tuple[Input, str]:
    """A base artifact drawn by ``rng`` with one to three mutations (of ``table``'s families, default
    :data:`FAMILIES`); returns it and its first family."""
    table = FAMILIES if table is None else table
    base = rng.choice(bases)
    data = base.data
    steps: list[str] = []
    families = list(table)
    weights = [table[f][0] for f in families]
    first = rng.choices(families, weights)[0]
    family = first
    refreshable = True
    for k in range(rng.choice([1, 1, 1, 1, 2, 2, 3])):
        if k:
            family = rng.choices(families, weights)[0]
        _, mutator, refreshable_family = table[family]
        try:
            data, what = mutator(rng, data, bases)
        except Exception as e:  # a bug of this script, not of pemn: keep going, but say so
            data, what = m_bitflip(rng, data, bases)
            what = f"MUTATOR ERROR {e!r}; fell back to {what}"
        refreshable = refreshable and refreshable_family
        steps.append(what if what.split(":")[0] in table else f"{family}: {what}")
    refreshed = False
    if refreshable and rng.random() < REFRESH_PROBABILITY:
        fixed = refresh_integrity(data)
        if fixed is not None:
            data, refreshed = fixed, True
            steps.append("integrity refreshed")
    return Input(data, base, steps, refreshed), first


# ------------------------------------------------------------------------------------------- the oracle


def same_content(a: artifact.Artifact, b: artifact.Artifact) -> bool:
    return a.metadata == b.metadata and a.tensors.keys() == b.tensors.keys() and all(
        a.tensors[k].dtype == b.tensors[k].dtype and torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)


def holds_what_the_file_says(data: bytes, model: nn.Module) -> str:
    """Empty if ``model`` (just loaded from ``data``) holds exactly the file's masks, dense tensors, prototype
    and config (every task's, for a multi-task file); else what differs."""
    art = artifact.parse(data)
    if art.tasks:
        if pemn.tasks(model) != [t.name for t in art.tasks]:
            return "task names"
        for t in art.tasks:
            with pemn.using_task(model, t.name):
                what = _holds(t.artifact, model)
            if what:
                return f"task {t.name}: {what}"
        return ""
    return _holds(art, model)


def _holds(art: artifact.Artifact, model: nn.Module) -> str:
    bank = find_bank(model)
    if bank.config != art.config:
        return "config"
    masks = artifact._masks(art, "")
    mws = pemn.masked_weights(model)
    if list(mws) != [e["name"] for e in art.manifest]:
        return "masked layer names"
    for e in art.manifest:
        want = mask_coding.unpack_bits(masks[e["name"]], math.prod(e["shape"])).reshape(e["shape"])
        if not np.array_equal(mws[e["name"]].current_mask().cpu().numpy(), want):
            return f"mask {e['name']}"
    theirs = artifact._dense_tensors(art, "")
    artifact._unfold(theirs, model, "")  # folded norms: the state loading gives them
    params, buffers = artifact._split_state(model)
    for kind, mine in (("param", params), ("buffer", buffers)):
        if set(mine) != set(theirs[kind]):
            return f"dense {kind} names"
        for k, t in theirs[kind].items():
            if not torch.equal(mine[k].detach(), t.to(mine[k].dtype)):
                return f"dense {kind} {k}"
    protos = bank.prototypes()
    if art.prototype_storage == "values":
        flat = np.concatenate([protos[n] for n in sorted(protos)])
        if not np.array_equal(flat, art.tensors["prototype"].numpy()):
            return "prototype"
    return ""


def state_unchanged(model: nn.Module, pristine: dict[str, torch.Tensor]) -> bool:
    if is_converted(model):
        return False
    state = model.state_dict()
    return state.keys() == pristine.keys() and all(
        state[k].dtype == v.dtype and torch.equal(state[k], v) for k, v in pristine.items())


class LoadTimeout(Exception):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise LoadTimeout


def _status_kib(key: str) -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def vm_hwm_kib() -> int:
    """This process's peak resident set size (VmHWM, KiB) from /proc/self/status (0 where there is none)."""
    return _status_kib("VmHWM:")


def vm_rss_kib() -> int:
    return _status_kib("VmRSS:")


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux: write 5 to /proc/self/clear_refs), so one load's own peak can
    be read; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@dataclass
class Stats:
    inputs: int = 0
    format_errors: int = 0
    loaded: int = 0
    loaded_identical_content: int = 0
    loaded_same_outputs: int = 0
    loaded_refreshed_edit_exact: int = 0
    other_exceptions: int = 0
    wrong_loads: int = 0
    model_changed_by_failed_load: int = 0
    timeouts: int = 0
    refreshed_inputs: int = 0
    mutator_errors: int = 0
    mutator_error_examples: list[dict[str, Any]] = field(default_factory=list)
    error_types: Counter = field(default_factory=Counter)
    families: dict[str, Counter] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)
    longest: dict[str, Any] = field(default_factory=lambda: {"seconds": 0.0})
    total_load_seconds: float = 0.0
    memory_steps: list[dict[str, Any]] = field(default_factory=list)
    process_peak_kib: int = 0
    largest_load_kib: int = 0
    largest_non_bomb_kib: int = 0
    largest_load: dict[str, Any] = field(default_factory=dict)

    def bad(self) -> int:
        return self.other_exceptions + self.wrong_loads + self.model_changed_by_failed_load + self.timeouts


class Fuzzer:
    """Loads inputs the way ``pemn.load`` does (from a file) and keeps the figures."""

    def __init__(self, bases: list[Base], workdir: Path, *, timeout: float = 30.0, save_failures: Path | None = None,
                 keep_failures: int = 50) -> None:
        self.bases = bases
        self.path = workdir / "input.pemn"
        self.timeout = timeout
        self.save_failures = save_failures
        self.keep_failures = keep_failures
        self.stats = Stats()
        self.models: dict[str, nn.Module] = {}  # a fresh model per kind, reused while failed loads leave it alone
        self.per_load_peak = reset_peak()
        self.load: Callable[[Path, nn.Module], Any] = pemn.load

    def _model(self, kind: str) -> nn.Module:
        if kind not in self.models:
            self.models[kind] = fresh_model(kind)
        return self.models[kind]

    def _fail(self, i: int, inp: Input, what: str, detail: str) -> None:
        s = self.stats
        if len(s.failures) < self.keep_failures:
            s.failures.append({"input": i, "base": inp.base.name, "what": what, "detail": detail[-2000:],
                               "mutations": inp.steps})
        if self.save_failures is not None:
            self.save_failures.mkdir(parents=True, exist_ok=True)
            (self.save_failures / f"input-{i}.pemn").write_bytes(inp.data)

    def check(self, i: int, inp: Input, family: str) -> str:
        """Load one input; returns its outcome's name."""
        s = self.stats
        s.inputs += 1
        s.refreshed_inputs += inp.refreshed
        if any("MUTATOR ERROR" in step for step in inp.steps):
            s.mutator_errors += 1
            if len(s.mutator_error_examples) < 5:
                s.mutator_error_examples.append({"input": i, "mutations": inp.steps})
        self.path.write_bytes(inp.data)
        model = self._model(inp.base.model)
        use_alarm = self.timeout > 0 and hasattr(signal, "SIGALRM")
        if use_alarm:
            previous = signal.signal(signal.SIGALRM, _alarm)
            signal.setitimer(signal.ITIMER_REAL, self.timeout)
        if self.per_load_peak:
            reset_peak()
        base_kib = vm_rss_kib() if self.per_load_peak else vm_hwm_kib()
        start = time.perf_counter()
        error: BaseException | None = None
        try:
            self.load(self.path, model)
        except LoadTimeout as e:
            error = e
        except FormatError as e:
            error = e
        except Exception as e:
            error = e
        finally:
            elapsed = time.perf_counter() - start
            if use_alarm:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, previous)
        s.total_load_seconds += elapsed
        peak = vm_hwm_kib()
        s.process_peak_kib = max(s.process_peak_kib, peak)
        extra = peak - base_kib  # with per-load peaks: above the RSS the load started from
        if extra > s.largest_load_kib:
            s.largest_load_kib = extra
            s.largest_load = {"input": i, "base": inp.base.name, "mutations": inp.steps}
        if extra > s.largest_non_bomb_kib and not any("zlib bomb" in step for step in inp.steps):
            s.largest_non_bomb_kib = extra
        if extra > 8 * 1024:
            s.memory_steps.append({"input": i, "mib": round(extra / 1024, 1), "mutations": inp.steps})
        if elapsed > s.longest["seconds"]:
            s.longest = {"seconds": elapsed, "input": i, "base": inp.base.name, "mutations": inp.steps}
        fam = s.families.setdefault(family, Counter())
        fam["inputs"] += 1
        if isinstance(error, LoadTimeout):
            s.timeouts += 1
            outcome = "timeout"
            self._fail(i, inp, "timeout", f"load took over {self.timeout} s")
            self.models.pop(inp.base.model, None)
        elif isinstance(error, FormatError):
            s.format_errors += 1
            s.error_types[type(error).__name__] += 1
            outcome = "format_error"
            if not state_unchanged(model, inp.base.pristine):
                s.model_changed_by_failed_load += 1
                outcome = "model_changed"
                self._fail(i, inp, "a failed load changed the model", repr(error))
                self.models.pop(inp.base.model, None)
        elif error is not None:
            s.other_exceptions += 1
            s.error_types[type(error).__name__] += 1
            outcome = "other_exception"
            self._fail(i, inp, f"{type(error).__name__} (not a FormatError)",
                       "".join(traceback.format_exception(error)))
            self.models.pop(inp.base.model, None)
        else:
            self.models.pop(inp.base.model, None)  # converted now: the next input gets a fresh model
            outcome = self._judge_success(i, inp, model)
        fam[outcome] += 1
        return outcome

    def _judge_success(self, i: int, inp: Input, model: nn.Module) -> str:
        s = self.stats
        s.loaded += 1
        try:
            parsed = artifact.parse(inp.data)
        except FormatError:
            parsed = None

        def same_outputs(base: Base) -> bool:
            try:
                out = run_model(model, base.x)
            except Exception:
                return False
            return out.dtype == base.expected.dtype and torch.equal(out, base.expected)

        # the content of one of the valid artifacts (a splice can rebuild another base exactly)
        twin = next((b for b in self.bases if b.model == inp.base.model and parsed is not None
                     and same_content(parsed, b.content)), None)
        if twin is not None and same_outputs(twin):
            s.loaded_identical_content += 1
            return "loaded_identical_content"
        if same_outputs(inp.base):
            s.loaded_same_outputs += 1
            return "loaded_same_outputs"
        if inp.refreshed:
            try:
                diff = holds_what_the_file_says(inp.data, model)
            except Exception as e:
                diff = f"could not re-read the file: {e!r}"
            if not diff:
                s.loaded_refreshed_edit_exact += 1
                return "loaded_refreshed_edit_exact"
            detail = f"the loaded model differs from the file in: {diff}"
        else:
            detail = "loaded without a valid integrity hash to different outputs"
        s.wrong_loads += 1
        self._fail(i, inp, "wrong load", detail)
        return "wrong_load"


# --------------------------------------------------------------------------------- quantized files (pemn-quant)
#
# The same harness for the quantized-model kind (pemn.training.quantfile, ``--kind quant``): bases are quantized
# models (each method, Deep Compression's pruned survivors, packed and entropy-coded codes), mutated by the raw,
# container, tensor and foreign families above and three of their own (metadata, the zlib JSON index, the codes /
# scales / extras tensors). The file has no integrity hash, so nothing is refreshed: a load that succeeds passes if
# the model gives the base's outputs bit for bit or holds exactly what an independent decoder
# (:func:`quant_reference_state`) reads from the file.

QUANT_SPECS: list[tuple[str, str, str, float | None]] = [  # (name, model, method, pruned fraction)
    ("conv-binary", "conv_bn_linear", "binary", None),
    ("conv-int4", "conv_bn_linear", "int4", None),
    ("mha-ternary", "mha_packed", "ternary", None),
    ("mha-int8", "mha_packed", "int8", None),
    ("tinycnn-int2", "tiny_cnn", "int2", None),
    ("tinycnn-ptq-int4", "tiny_cnn", "ptq-int4", None),
    ("conv16-dc-ternary", "conv_bn16", "ternary", 0.8),
    ("tinycnn-dc-int4", "tiny_cnn", "int4", 0.7),
    ("normal-int4-categorical", "normal_mlp", "int4", None),
    ("normal-dc-int4-categorical", "normal_mlp", "int4", 0.3),
]
QUANT_META_KEYS = ["format", "format_version", "method", "pemn_app"]
QUANT_METHOD_VALUES = ["binary", "ternary", "int2", "int4", "int8", "ptq-int4", "int3", "", "BINARY"]


def build_quant_base(name: str, kind: str, method: str, compression: float | None) -> Base:
    """Quantize a fresh model (pruned first for Deep Compression), train it one step, save it."""
    from pemn.training.prune import prune_, remove_pruning_
    from pemn.training.quantfile import load_quant, save_quant
    from pemn.training.quantize import quantize_

    model = fresh_model(kind)
    masks = None
    if compression is not None:
        prune_(model, "magnitude", compression)
        masks = remove_pruning_(model)
    quantize_(model, method, masks)
    train_one_step(model, kind)
    with tempfile.TemporaryDirectory(prefix="pemn-fuzz-") as tmp:
        path = Path(tmp) / "base.quant.safetensors"
        save_quant(model, path, method, extra_metadata={"pemn_app": json.dumps({"model": kind})})
        data = canonical(path.read_bytes())
        path.write_bytes(data)
        loaded = load_quant(path, fresh_model(kind))
    x_eval = torch.randn(*MODELS[kind][1], generator=torch.Generator().manual_seed(2))
    return Base(name, kind, data, x_eval, run_model(loaded, x_eval), fresh_model(kind).state_dict())


def build_quant_bases() -> list[Base]:
    return [build_quant_base(*spec) for spec in QUANT_SPECS]


def _quant_index(p: Parts) -> Any:
    return json.loads(zlib.decompress(p.tensors["index"].numpy().tobytes()))


def _set_quant_index(p: Parts, index: Any, *, text: bytes | None = None) -> None:
    raw = text if text is not None else json.dumps(index, separators=(",", ":")).encode()
    p.tensors["index"] = uint8(zlib.compress(raw, 9))


def m_quant_metadata(rng: random.Random, data: bytes, bases: list[Base]) -> tuple[bytes, str]:
    p = take_apart(data)
    if p is None:
        return m_container(rng, data, bases)
    key = rng.choice(QUANT_META_KEYS)
    op = rng.choice(["set", "set", "delete", "add"])
    if op == "delete":
        p.meta.pop(key, None)
        return put_together(p), f"qmetadata: {key} deleted"
    if op == "add":
        p.meta[rng.choice(["zzz", "manifest", "integrity", "config"])] = rng.choice(["1", "", "{}", "x" * 100])
        return put_together(p), "qmetadata: unknown key added"
    value = {"format": rng.choice(["pemn", "pemn-sparse", "pt", "pemn-quant ", "", "PEMN-QUANT"]),
             "format_version": rng.choice(["0", "2", "1.0", " 1", "", "01"]),
             "method": rng.choice(QUANT_METHOD_VALUES),
             "pemn_app": rng.choice(["{", "[]", "null", json.dumps({"model": 1})])}[key]
    p.meta[key] = value
    return put_together(p), f"qmetadata: {key} -> {value!r}"


def m_quant_index(rng: random.Random, data: bytes, bases: list[Base]) -> tuple[bytes, str]:
    p = take_apart(data)
    if p is None or "index" not in p.tensors:
        return m_container(rng, data, bases)
    try:
        index = _quant_index(p)
    except Exception:
        return m_tensor(rng, data, bases)
    op = rng.choice(["layer", "layer", "layer", "layer", "extra", "extra", "method", "reorder", "drop", "duplicate",
                     "not_json", "not_zlib", "trailing", "bomb", "nested", "top"])
    if not isinstance(index, dict):
        return m_tensor(rng, data, bases)
    layers, extras = index.get("layers", []), index.get("extras", [])
    if not (isinstance(layers, list) and isinstance(extras, list)  # format version 2: arrays
            and all(isinstance(e, list) and len(e) == 6 for e in layers)
            and all(isinstance(g, list) and len(g) == 2 and isinstance(g[1], list) for g in extras)):
        return m_tensor(rng, data, bases)
    if op == "layer" and layers:
        e = rng.choice(layers)
        i = rng.choice([0, 1, 2, 3, 4, 5, 5, 6])  # name, shape, coding, kept, nonzero, bytes, bytes; 6: length
        what = ("name", "shape", "coding", "kept", "nonzero", "bytes", "length")[i]
        if what == "shape":
            e[1] = interesting_shape(rng, list(e[1]) if isinstance(e[1], list) else [1])
        elif what == "bytes":
            sizes = list(e[5]) if isinstance(e[5], list) and len(e[5]) == 3 else [0, 0, 0]
            k = rng.randrange(3)
            sizes[k] = interesting_int(rng, sizes[k]) if rng.random() < 0.5 else sizes[k] + rng.choice([-1, 1, 4])
            e[5] = rng.choice([sizes, sizes, sizes[:2], None, "0"])
        elif what == "coding":
            e[2] = rng.choice(["packed", "entropy", "categorical", "Packed", None, 1])
        elif what == "name":
            e[0] = rng.choice(["", None, 0, "zzz", layers[0][0], *(g[0] + ".weight" for g in extras[:1])])
        elif what == "length":
            rng.choice([e.pop, lambda: e.append(rng.choice([0, "x", None]))])()
        else:
            e[i] = interesting_int(rng, e[i] if isinstance(e[i], int) else 0)
        _set_quant_index(p, index)
        return put_together(p), f"qindex: layer {str(e[:1])[:40]} {what} -> {str(e)[:80]}"
    if op == "extra" and extras:
        g = rng.choice(extras)
        what = rng.choice(["module", "attribute", "shape", "dtype", "empty", "entry"])
        if what == "module":
            g[0] = rng.choice(["", None, "zzz", layers[0][0] if layers else "x", extras[0][0]])
        elif what == "empty":
            g[1] = rng.choice([[], None, "x"])
        elif g[1] and isinstance(g[1][0], list) and len(g[1][0]) == 3:
            e = rng.choice(g[1])
            if what == "attribute":
                e[0] = rng.choice(["", None, "weight", "zzz", "a.b"])
            elif what == "shape":
                e[1] = interesting_shape(rng, list(e[1]) if isinstance(e[1], list) else [1])
            elif what == "dtype":
                e[2] = rng.choice(["float16", "int64", "float32", "", None])
            else:
                g[1].append(copy.deepcopy(e) if rng.random() < 0.5 else rng.choice([[], ["x"], 3]))
        _set_quant_index(p, index)
        return put_together(p), f"qindex: extras of {str(g[0])[:30]} {what} -> {str(g)[:80]}"
    if op == "method":
        index["method"] = rng.choice([*QUANT_METHOD_VALUES, None, 1])
        _set_quant_index(p, index)
        return put_together(p), f"qindex: method -> {index['method']!r}"
    if op in ("reorder", "drop", "duplicate"):
        lst = rng.choice([x for x in (layers, extras) if x] or [layers])
        if op == "reorder" and len(lst) > 1:
            i, j = rng.sample(range(len(lst)), 2)
            lst[i], lst[j] = lst[j], lst[i]
        elif op == "drop" and lst:
            lst.pop(rng.randrange(len(lst)))
        elif lst:
            lst.append(copy.deepcopy(rng.choice(lst)))
        _set_quant_index(p, index)
        return put_together(p), f"qindex: entries {op}"
    if op == "not_json":
        _set_quant_index(p, None, text=rng.choice([b"{", b"", b"\xff\xfe", b"[1,2", b"NaN"]))
        return put_together(p), "qindex: not JSON"
    if op == "not_zlib":
        p.tensors["index"] = uint8(rng.randbytes(rng.choice([0, 1, 16, 200])))
        return put_together(p), "qindex: not zlib"
    if op == "trailing":
        p.tensors["index"] = uint8(zlib.compress(json.dumps(index).encode()) + rng.choice([b"\0", b"x" * 9]))
        return put_together(p), "qindex: trailing bytes"
    if op == "bomb" and rng.random() < ZLIB_BOMB_PROBABILITY * 10:
        p.tensors["index"] = uint8(zlib_stream(b'{"method":"int4","layers":[', b" ", 80 << 20))
        return put_together(p), "qindex: zlib bomb"
    if op == "nested":
        _set_quant_index(p, None, text=b"[" * 100_000 + b"]" * 100_000)
        return put_together(p), "qindex: deep nesting"
    if op == "top":
        _set_quant_index(p, rng.choice([[], "x", 1, None, {"layers": layers}, {"extras": extras, "layers": {}}]))
        return put_together(p), "qindex: top level replaced"
    return m_tensor(rng, data, bases)


def m_quant_tensor(rng: random.Random, data: bytes, bases: list[Base]) -> tuple[bytes, str]:
    p = take_apart(data)
    if p is None:
        return m_container(rng, data, bases)
    op = rng.choice(["codes", "codes", "codes", "scales", "scales", "extras", "int_extras"])
    if op == "codes" and "codes" in p.tensors and p.tensors["codes"].numel():
        c = p.tensors["codes"].reshape(-1).clone()
        i = rng.randrange(c.numel())
        n = rng.choice([1, 1, 4, c.numel()])
        c[i:i + n] = uint8(rng.randbytes(len(c[i:i + n])))
        p.tensors["codes"] = c
        return put_together(p), f"qtensor: codes[{i}:{i + n}] randomised"
    if op == "scales" and p.tensors.get("scales", torch.zeros(0, dtype=torch.int8)).is_floating_point() \
            and p.tensors["scales"].numel():
        t = p.tensors["scales"].reshape(-1).clone()
        i = rng.randrange(t.numel())
        t[i] = rng.choice([float("nan"), float("inf"), -1.0, 0.0, 65504.0, 1e-7, 2.0])
        p.tensors["scales"] = t
        return put_together(p), f"qtensor: scales[{i}] -> {float(t[i])}"
    if op == "extras" and p.tensors.get("extras", torch.zeros(0, dtype=torch.int8)).is_floating_point() \
            and p.tensors["extras"].numel():
        t = p.tensors["extras"].reshape(-1).clone()
        i = rng.randrange(t.numel())
        t[i] = rng.choice([float("nan"), float("inf"), -1.0, 0.0, 3.5])
        p.tensors["extras"] = t
        return put_together(p), f"qtensor: extras[{i}] -> {float(t[i])}"
    if op == "int_extras":
        p.tensors["extras_int"] = rng.choice([torch.arange(3), torch.zeros(0, dtype=torch.int64), torch.ones(2)])
        return put_together(p), "qtensor: extras_int replaced"
    return m_tensor(rng, data, bases)


QUANT_FAMILIES: dict[str, tuple[float, Mutator, bool]] = {
    "raw": (0.30, FAMILIES["raw"][1], False),
    "container": (0.14, m_container, False),
    "qmetadata": (0.10, m_quant_metadata, False),
    "qindex": (0.18, m_quant_index, False),
    "qtensor": (0.14, m_quant_tensor, False),
    "tensor": (0.08, m_tensor, False),
    "foreign": (0.06, m_foreign, False),
}
_QUANT_LEVELS = {"binary": (1, -1), "ternary": (2, -1), "int2": (2, -1), "int4": (4, -7), "int8": (8, -127)}


def _bits_at(buf: bytes, i: int, bits: int) -> int:
    """Code ``i`` of ``bits`` bits, least-significant first (the layout, read one code at a time)."""
    return (buf[i * bits // 8] >> (i * bits % 8)) & ((1 << bits) - 1)


def quant_reference_state(data: bytes) -> dict[str, torch.Tensor]:
    """The state a quantized file describes, read by a second, plain decoder (a code at a time)."""
    tensors = st_load(data)
    index = json.loads(zlib.decompress(tensors["index"].numpy().tobytes()))
    bits, low = _QUANT_LEVELS[index["method"].removeprefix("ptq-")]
    if not isinstance(index["layers"][0], dict):  # format version 2: arrays
        keys = ("name", "shape", "coding", "kept", "nonzero", "bytes")
        index["layers"] = [dict(zip(keys, e, strict=True)) for e in index["layers"]]
        index["extras"] = [{"name": f"{g[0]}.{a}" if g[0] else a, "shape": shape, "dtype": dtype}
                           for g in index["extras"] for a, shape, dtype in g[1]]
    blob = tensors["codes"].numpy().tobytes()
    scales = tensors["scales"].float()
    state: dict[str, torch.Tensor] = {}
    at = row = 0
    for e in index["layers"]:
        shape, kept = e["shape"], e["kept"]
        count = math.prod(shape)
        n_pos, n_codes, n_signs = e["bytes"]
        pos, codes, signs = blob[at:at + n_pos], blob[at + n_pos:at + n_pos + n_codes], \
            blob[at + n_pos + n_codes:at + n_pos + n_codes + n_signs]
        at += n_pos + n_codes + n_signs
        keep = (mask_coding.decode_entropy(np.frombuffer(pos, np.uint8), count, kept) if n_pos
                else np.ones(count, bool))
        if e["coding"] == "packed":
            values = [_bits_at(codes, i, bits) * 2 - 1 if bits == 1 and low == -1 and index["method"] == "binary"
                      else _bits_at(codes, i, bits) + low for i in range(kept)]
        elif e["coding"] == "categorical":
            levels = 3 if bits == 2 else 2 ** bits - 1
            counts = np.frombuffer(codes[:4 * levels], "<u4").astype(np.float64)
            words = np.frombuffer(codes[4 * levels:], "<u4").astype(np.uint32)
            model = constriction.stream.model.Categorical(counts / counts.sum(), perfect=False)
            symbols = constriction.stream.queue.RangeDecoder(words).decode(model, kept) if kept else []
            values = [int(v) + low for v in symbols]
        else:
            nz = mask_coding.decode_entropy(np.frombuffer(codes, np.uint8), kept, e["nonzero"])
            sign_iter = iter(_bits_at(signs, j, 1) for j in range(e["nonzero"]))
            values = [(1 if next(sign_iter) else -1) if z else 0 for z in nz]
        full = torch.zeros(count)
        full[torch.from_numpy(np.flatnonzero(keep))] = torch.tensor(values, dtype=torch.float32)
        rows = shape[0] if shape else 1
        state[e["name"]] = (scales[row:row + rows, None] * full.reshape(rows, -1)).reshape(shape)
        row += rows
    f = i = 0
    for e in index["extras"]:
        n = math.prod(e["shape"])
        if e["dtype"] == "float32":
            state[e["name"]] = tensors["extras"][f:f + n].reshape(e["shape"])
            f += n
        else:
            state[e["name"]] = tensors["extras_int"][i:i + n].reshape(e["shape"])
            i += n
    return state


class QuantFuzzer(Fuzzer):
    """The fuzzer for quantized files: loads with :func:`pemn.training.quantfile.load_quant`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from pemn.training.quantfile import load_quant

        super().__init__(*args, **kwargs)
        self.load = load_quant

    def _judge_success(self, i: int, inp: Input, model: nn.Module) -> str:
        s = self.stats
        s.loaded += 1
        try:
            out = run_model(model, inp.base.x)
            same = out.dtype == inp.base.expected.dtype and torch.equal(out, inp.base.expected)
        except Exception:
            same = False
        if same:
            s.loaded_same_outputs += 1
            return "loaded_same_outputs"
        try:
            want = quant_reference_state(inp.data)
            mine = model.state_dict()
            diff = "" if want.keys() == mine.keys() and all(
                torch.equal(mine[k], want[k].to(mine[k].dtype)) for k in want) else "the state"
            if any(not torch.isfinite(t).all() for t in mine.values() if t.is_floating_point()):
                diff = "a weight or extra is not finite (the loader must refuse it)"
        except Exception as e:
            diff = f"could not re-read the file: {e!r}"
        if not diff:
            s.loaded_refreshed_edit_exact += 1
            return "loaded_edit_exact"
        s.wrong_loads += 1
        self._fail(i, inp, "wrong load", f"the loaded model differs from the file in: {diff}")
        return "wrong_load"


def run(inputs: int, seed: int, *, timeout: float = 30.0, save_failures: Path | None = None,
        bases: list[Base] | None = None, progress: bool = False, kind: str = "pemn") -> dict[str, Any]:
    """Fuzz ``inputs`` inputs of the file ``kind`` (``pemn``: ``.pemn`` artifacts; ``quant``: quantized models);
    returns the figures (see the module doc)."""
    t0 = time.perf_counter()
    quant = kind == "quant"
    bases = bases if bases is not None else build_quant_bases() if quant else build_bases()
    table = QUANT_FAMILIES if quant else FAMILIES
    build_seconds = time.perf_counter() - t0
    hwm_before = vm_hwm_kib()
    marker = Path(_Marker.path)
    marker.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="pemn-fuzz-") as tmp:
        fuzzer = (QuantFuzzer if quant else Fuzzer)(bases, Path(tmp), timeout=timeout, save_failures=save_failures)
        s = fuzzer.stats
        for i in range(inputs):
            inp, family = make_input(seed, i, bases, table)
            fuzzer.check(i, inp, family)
            if progress and (i + 1) % 1000 == 0:
                print(f"{i + 1} inputs, {s.bad()} failures, {time.perf_counter() - t0:.0f} s", file=sys.stderr,
                      flush=True)
    hwm_after = vm_hwm_kib()
    unpickled = marker.exists()
    seconds = time.perf_counter() - t0
    return {
        "kind": kind,
        "inputs": s.inputs,
        "seed": seed,
        "format_errors": s.format_errors,
        "loaded": s.loaded,
        "loaded_breakdown": {"identical_content": s.loaded_identical_content, "same_outputs": s.loaded_same_outputs,
                             ("edit_loaded_exactly" if quant else "refreshed_edit_loaded_exactly"):
                                 s.loaded_refreshed_edit_exact},
        "other_exceptions": s.other_exceptions,
        "wrong_loads": s.wrong_loads,
        "model_changed_by_failed_load": s.model_changed_by_failed_load,
        "timeouts": s.timeouts,
        "unpickled_anything": unpickled,
        "failures_total": s.bad() + int(unpickled),
        "integrity_refreshed_inputs": s.refreshed_inputs,
        "mutator_errors": s.mutator_errors,
        "mutator_error_examples": s.mutator_error_examples,
        "error_types": dict(s.error_types.most_common()),
        "by_family": {k: dict(v) for k, v in sorted(s.families.items())},
        "peak_memory": {
            "vm_hwm_before_mib": round(hwm_before / 1024, 1),
            "vm_hwm_after_mib": round(max(hwm_after, s.process_peak_kib) / 1024, 1),
            "increase_mib": round((max(hwm_after, s.process_peak_kib) - hwm_before) / 1024, 1),
            "per_load_peaks_measured": fuzzer.per_load_peak,
            "largest_single_load_mib": round(s.largest_load_kib / 1024, 1),
            "largest_single_load": s.largest_load,
            "largest_load_except_zlib_bombs_mib": round(s.largest_non_bomb_kib / 1024, 1),
            "loads_over_8_mib": len(s.memory_steps),
            "loads_over_8_mib_first": s.memory_steps[:5]},
        "longest_load": {**s.longest, "seconds": round(s.longest["seconds"], 4)},
        "mean_load_ms": round(1000 * s.total_load_seconds / max(s.inputs, 1), 3),
        "bases": [{"name": b.name, "bytes": len(b.data)} for b in bases],
        "build_seconds": round(build_seconds, 2),
        "seconds": round(seconds, 1),
        "failures": s.failures,
    }


def _machine() -> dict[str, Any]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    try:
        from _common import machine
    except ImportError:
        return {}
    return machine()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=10_000, help="number of mutated inputs (default 10000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the run (input i is replayable alone)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds one load may take (default 30)")
    parser.add_argument("--save-failures", type=Path, default=None, help="write failing inputs to this folder")
    parser.add_argument("--replay", type=int, default=None, help="rebuild input I of --seed and load it alone")
    parser.add_argument("--memory-limit-gib", type=float, default=8.0,
                        help="address-space limit, so a runaway allocation fails instead of exhausting the machine")
    parser.add_argument("--progress", action="store_true", help="a line on stderr every 1000 inputs")
    parser.add_argument("--kind", choices=("pemn", "quant"), default="pemn",
                        help="the files to fuzz: pemn (.pemn artifacts, default) or quant (quantized models)")
    args = parser.parse_args(argv)
    if args.memory_limit_gib > 0:
        limit = int(args.memory_limit_gib * (1 << 30))
        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    torch.set_num_threads(1)
    if args.replay is not None:
        quant = args.kind == "quant"
        bases = build_quant_bases() if quant else build_bases()
        inp, family = make_input(args.seed, args.replay, bases, QUANT_FAMILIES if quant else FAMILIES)
        with tempfile.TemporaryDirectory(prefix="pemn-fuzz-") as tmp:
            fuzzer = (QuantFuzzer if quant else Fuzzer)(bases, Path(tmp), timeout=args.timeout,
                                                        save_failures=args.save_failures)
            outcome = fuzzer.check(args.replay, inp, family)
        print(json.dumps({"input": args.replay, "base": inp.base.name, "family": family, "mutations": inp.steps,
                          "outcome": outcome, "failures": fuzzer.stats.failures}, indent=2))
        return 0 if not fuzzer.stats.bad() else 1
    result = run(args.inputs, args.seed, timeout=args.timeout, save_failures=args.save_failures,
                 progress=args.progress, kind=args.kind)
    kind = "" if args.kind == "pemn" else f" --kind {args.kind}"
    doc = {"benchmark": "fuzz_loader",
           "command": f"python {SCRIPT} --inputs {args.inputs} --seed {args.seed}{kind}",
           "machine": _machine(), "memory_limit_gib": args.memory_limit_gib, **result}
    print(json.dumps(doc, indent=2, default=str))
    return 0 if result["failures_total"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
