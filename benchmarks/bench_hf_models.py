"""Artifact size of transformers architectures built from tiny config objects (no downloads): the dense fp32
model (each tensor counted once: the competitor) against the pemn file with the default
``PEMNConfig(strategy="rp", ratio=1e-3, keep=0.5)``, and against pemn with embeddings and GPT-2's ``Conv1D`` left
dense (``exclude=["Embedding", "Conv1D"]``, what pemn masked before they were in its layer table). The models are
tests/test_any_model.py's table (hidden 64, 2 layers, MLP 256, vocabulary 1024) plus RoBERTa, DistilBERT, ResNet
and Wav2Vec2 (its weight_norm position conv masked through the norm: the direction v masked, the magnitude g dense).

    python benchmarks/bench_hf_models.py [--quick]
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

import pemn
from _common import emit, machine, quick_flag

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
import test_any_model as table

transformers = table.transformers
DIMS = table.DIMS
EXTRA = {
    "roberta": (lambda: transformers.RobertaForMaskedLM(transformers.RobertaConfig(
        vocab_size=table.V, max_position_embeddings=66, pad_token_id=1, **DIMS)), []),
    "distilbert": (lambda: transformers.DistilBertForMaskedLM(transformers.DistilBertConfig(
        vocab_size=table.V, dim=64, n_layers=2, n_heads=4, hidden_dim=256, max_position_embeddings=64)), []),
    "resnet": (lambda: transformers.ResNetForImageClassification(transformers.ResNetConfig(
        embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], num_labels=10)), []),
    "wav2vec2": (lambda: transformers.Wav2Vec2ForCTC(transformers.Wav2Vec2Config(
        vocab_size=32, conv_dim=(32, 32), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4, **DIMS)), []),
}


def file_bytes(make: Callable[[], torch.nn.Module], exclude: list[str]) -> tuple[int, int, float]:
    torch.manual_seed(0)
    model = make()
    dense = table.fp32_bytes_once(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pemn.convert_(model, pemn.PEMNConfig(strategy="rp", ratio=1e-3, keep=0.5, exclude=exclude))
    s = pemn.summary(model, verbose=False)
    assert s.dense_bytes == dense  # the summary's ratio is the real one
    return dense, s.file_bytes, s.dense.dense_elements / s.dense.total_elements


def main(argv: list[str] | None = None) -> dict:
    quick = quick_flag(argv)
    torch.set_num_threads(1)
    models = {n: (lambda n=n: table.build(n, 0), []) for n in sorted(table.MODELS)}
    if not quick:
        models.update(EXTRA)
    rows = []
    for name, (make, exclude) in models.items():
        t = time.perf_counter()
        dense, pemn_bytes, dense_share = file_bytes(make, exclude)
        try:
            _, old_bytes, _ = file_bytes(make, [*exclude, "Embedding", "Conv1D"])
        except pemn.ConversionError:  # GPT-2: nothing left to mask (its head is tied to the dense embedding)
            old_bytes = None
        rows.append({"model": name, "dense_fp32_bytes": dense, "pemn_bytes": pemn_bytes,
                     "ratio_dense_over_pemn": round(dense / pemn_bytes, 2),
                     "pemn_embeddings_dense_bytes": old_bytes,
                     "ratio_dense_over_pemn_embeddings_dense": round(dense / old_bytes, 2) if old_bytes else None,
                     "share_left_dense": round(dense_share, 4), "exclude": exclude,
                     "seconds": round(time.perf_counter() - t, 2)})
    return {"benchmark": "bench_hf_models", "machine": machine(), "config": "rp ratio 1e-3 keep 0.5, packed",
            "results": rows}


if __name__ == "__main__":
    emit(main(sys.argv[1:]))
