"""``pemn quantize``: post-training quantization of a dense model file into a ``pemn-quant`` file.

:func:`quantize_model_file` reads a dense ``model.safetensors`` (a ``pemn train --strategy dense`` run),
quantizes every Conv/Linear/Embedding weight per output channel
(:func:`pemn.training.quantize.post_training_quantize_`), re-estimates BatchNorm statistics on training images
where the model's workload reads them (:meth:`~pemn.training.workloads.Workload.ptq_data`), writes the
quantized file (:func:`pemn.training.quantfile.save_quant`, the app metadata carried over) and measures the test
accuracy of the dense and of the reloaded quantized model. It returns a :class:`PTQReport`: the JSON object and the
text lines the command prints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pemn.training import artifacts as arts
from pemn.training.errors import OptionError
from pemn.training.quantfile import quant_info, save_quant
from pemn.training.quantize import PTQ_CALIBRATION_IMAGES, post_training_quantize_
from pemn.training.workloads import Workload, workload_of_file

__all__ = ["PTQReport", "default_output", "quantize_model_file"]


@dataclass(frozen=True)
class PTQReport:
    """What ``pemn quantize`` reports: ``record``, the JSON object of ``--json`` (``artifact``, ``output``,
    ``method``, ``file_bytes``, ``payload_bytes``, ``code_bits_per_weight`` (the codes' bits per weight),
    ``bits_per_weight`` (8 × the whole file's bytes per weight, as in ``sweep.csv``), ``batchnorm_layers_calibrated``,
    ``calibration_images``, ``dense_accuracy``, ``accuracy``; the accuracies None without an evaluation), and
    ``lines``, the text."""

    record: dict[str, Any]
    lines: list[str]


def default_output(path: Path, method: str) -> Path:
    """The quantized file beside the dense one: ``model.safetensors`` -> ``model.ptq-int4.quant.safetensors``."""
    return path.with_name(f"{path.name.split('.')[0]}.{method}{arts.KINDS['quant'].filename[len('model'):]}")


def quantize_model_file(artifact: str | os.PathLike[str], method: str, *,
                        output: str | os.PathLike[str] | None = None, model: str | None = None,
                        dataset: str | None = None, data_dir: str | None = None, download: bool = False,
                        evaluate: bool = True) -> PTQReport:
    """Post-training quantization (``method``: ptq-int8, ptq-int4 or ptq-int2) of the dense model file at
    ``artifact`` into ``output`` (default :func:`default_output`); see the module doc. ``model``/``dataset``/
    ``data_dir`` as :func:`pemn.training.artifacts.open_model_file`; ``evaluate``: measure the test split before
    and after. :class:`~pemn.training.errors.OptionError` for a file that is not dense, an output that would
    overwrite it, or options that contradict it."""
    path = Path(artifact)
    kind, app = arts.file_kind_and_app(path)
    if kind.name != "dense":
        raise OptionError(f"{path} is {kind.description}; pemn quantize takes a dense model.safetensors (a run of "
                          "pemn train --strategy dense)")
    out = Path(output) if output else default_output(path, method)
    if out.resolve() == path.resolve():
        raise OptionError(f"the output {out} would overwrite the dense model; give another -o")
    data = (workload_of_file(app) or Workload).ptq_data(  # a kind no workload writes: the file alone
        path, app, model=model, dataset=dataset, data_dir=data_dir, download=download, evaluate=evaluate)
    net, images = data.model, data.calibration
    dense_acc = data.accuracy(net)
    n = post_training_quantize_(net.eval(), method, images, data.transform)
    save_quant(net, out, method, extra_metadata=arts.app_metadata(app))
    loaded, _, _ = arts.load_model(out)  # the file alone rebuilds the quantized model
    acc = data.accuracy(loaded)
    q = quant_info(out)
    used = 0 if images is None else min(len(images), PTQ_CALIBRATION_IMAGES)
    record = {"artifact": str(path), "output": str(out), "method": method, "file_bytes": q["file_bytes"],
              "payload_bytes": q["payload_bytes"], "code_bits_per_weight": q["code_bits_per_weight"],
              "bits_per_weight": q["bits_per_weight"],
              "batchnorm_layers_calibrated": n, "calibration_images": used if n else 0,
              "dense_accuracy": dense_acc, "accuracy": acc}
    lines = [f"wrote {out} ({q['file_bytes']:,} bytes, {method}: {q['code_bits_per_weight']:.3f} code bits per "
             f"weight, whole file {q['bits_per_weight']:.3f} bits per weight; "
             + (f"BatchNorm statistics of {n} layers re-estimated on {used:,} training images)" if n
                else "no BatchNorm to calibrate)")]
    if acc is not None:
        lines.append(f"test accuracy {acc:.2f} % (the dense file: {dense_acc:.2f} %, {path.stat().st_size:,} bytes)")
    return PTQReport(record, lines)
