"""The ``pemn`` command line: train, evaluate, inspect, export and sweep PEMN models.

``main(argv)`` parses with stdlib argparse, keeps no global state and returns an exit code, one per kind of
error (:data:`EXIT_CODES`, the table in README.md). Errors print one ``pemn: error: ...`` line on stderr (a mistyped
option names the closest one), never a traceback.

Imports: the modules here that import torch (every application module but :mod:`pemn.training.progress` and
:mod:`pemn.training.errors`, and :mod:`pemn` itself) are imported inside the function that uses them, as plain
``from pemn.training... import`` statements (visible to import-linter, type checkers and IDEs; nothing goes through
``importlib``), so that ``pemn --version`` and ``import pemn.training.cli`` stay torch-free (tests/test_cli_usage.py);
the torch-free ones are imported at the top.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from pemn._version import __version__
from pemn.errors import FormatError, PEMNError
from pemn.training import progress
from pemn.training.errors import DatasetError

__all__ = ["EXIT_CODES", "build_parser", "main"]

PROG = "pemn"


class UsageError(Exception):
    """A command line that cannot be run as given (exit code 2)."""


#: ``pemn``'s exit codes: (code, kind, the exceptions that end with it, by dotted name so that nothing is imported
#: to read the table). An error of none of these kinds exits 1; a signal N exits 128 + N (130 for Ctrl-C, 143 for
#: SIGTERM: pemn train saves a checkpoint first); a closed output pipe (``pemn models | head``) exits 141.
EXIT_CODES: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (0, "success", ()),
    (1, "the work itself failed: training diverged, an export does not match its model, a sweep run failed, "
        "an unforeseen error", ("RuntimeError",)),
    (2, "the command line: an unknown option or name, a bad value, contradictory options",
     ("pemn.training.cli.UsageError", "pemn.errors.ConversionError", "pemn.training.models.ModelError")),
    (3, "a model file that cannot be used: corrupt, truncated, foreign, or not the model it is loaded into",
     ("pemn.errors.FormatError",)),
    (4, "the data: a dataset or text file missing, incomplete, corrupt, or not what the model was trained on",
     ("pemn.errors.DatasetError", "pemn.training.text.VocabularyError")),
    (5, "a file or folder that cannot be read or written: missing, no permission, disk full",
     ("OSError",)),
    (6, "the run folder: another run is writing into it, it already holds a run (--resume continues it), or it "
        "is a file", ("pemn.training.runlock.RunBusyError", "FileExistsError")),
)
#: The codes of the table, by name, for the code that returns them.
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_SIGNAL_BASE, EXIT_BROKEN_PIPE = 128, 141


def _exit_code(e: BaseException) -> int:
    """The :data:`EXIT_CODES` code of an error: the kind whose class is the most specific base of ``e``'s
    (``FileExistsError`` is a run-folder error before it is an ``OSError``), 1 if none is."""
    import builtins

    mro = type(e).__mro__
    best = (len(mro), EXIT_FAILED)
    for code, _, names in EXIT_CODES:
        for name in names:
            module, _, attr = name.rpartition(".")
            if module and module not in sys.modules:  # not imported: nothing raised is of that class
                continue
            cls = getattr(sys.modules[module] if module else builtins, attr, None)
            if cls in mro:
                best = min(best, (mro.index(cls), code))
    return best[1]


def _closest_option(parser: argparse.ArgumentParser, word: str) -> str | None:
    """The option of ``parser`` closest to the mistyped ``word`` (``--epoch`` -> ``--epochs``), or None."""
    import difflib

    options = [o for action in parser._actions for o in action.option_strings if o.startswith("--")]
    found = difflib.get_close_matches(word.split("=", 1)[0], options, n=1, cutoff=0.6)
    return found[0] if found else None


class _Parser(argparse.ArgumentParser):
    """argparse with short errors: the problem on one line (a mistyped option or command names the closest one),
    then where the help is; never the usage block (``pemn train``'s is 30 lines)."""

    def error(self, message: str) -> NoReturn:
        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if choice:
            import difflib

            valid = re.findall(r"'([^']*)'", choice.group(2))
            close = difflib.get_close_matches(choice.group(1), valid, n=1, cutoff=0.6)
            if close:
                message += f"; did you mean {close[0]!r}?"
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def unrecognized(self, extras: Sequence[str]) -> NoReturn:
        """The error for arguments nothing took, with the closest option to each mistyped one."""
        hints = [(word, close) for word in extras if word.startswith("-") and (close := _closest_option(self, word))]
        said = (f"; did you mean {hints[0][1]}?" if len(hints) == 1 else
                f"; did you mean {', '.join(f'{close} for {word}' for word, close in hints)}?" if hints else "")
        self.error(f"unrecognized arguments: {' '.join(extras)}{said}")


# --------------------------------------------------------------------------------------------- helpers


def _out(msg: str = "") -> None:
    print(msg, flush=True)


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    if isinstance(e, KeyError) and len(e.args) == 1:
        text = str(e.args[0])
    if not text:
        text = type(e).__name__
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _field_default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _resolve(overrides: dict[str, Any], *, recipe: str | None, config_file: str | None) -> Any:
    from pemn.training import config as tm

    if config_file is not None and not Path(config_file).is_file():
        raise UsageError(f"no config file at {config_file!r}")
    try:
        cfg = tm.resolve_config(overrides, recipe=recipe, config_file=config_file)
    except (ValueError, TypeError, KeyError) as e:
        raise UsageError(_one_line(e)) from None
    return cfg


def _device(name: str) -> Any:
    from pemn.training.dist import resolve_device

    try:
        return resolve_device(name)
    except ValueError as e:
        raise UsageError(f"--device: {_one_line(e)}") from None


def _default_eval_batch() -> int:
    from pemn.training.evaluation import DEFAULT_EVAL_BATCH

    return DEFAULT_EVAL_BATCH


#: The --threads help of every command that runs a model (train's comes from TrainConfig.threads).
THREADS_HELP = "CPU threads (default: as pemn train, the idle CPUs, 1 to 4)"


def _add_threads_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=None, metavar="N", help=THREADS_HELP)


def _threaded(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``command`` run with torch's CPU threads at ``--threads N``, else pemn train's load-aware default
    (:func:`pemn.training.dist.default_threads`), and the caller's count restored afterwards; the count used is
    ``args.threads_used``."""

    def run(args: argparse.Namespace) -> int:
        if args.threads is not None and args.threads < 1:
            raise UsageError(f"--threads must be >= 1, got {args.threads}")
        import torch

        from pemn.training.dist import set_threads

        args.threads_used, previous = set_threads(args.threads)
        try:
            return command(args)
        finally:
            torch.set_num_threads(previous)

    return run


# --------------------------------------------------------------------------------------------- models / datasets


def _cmd_models(args: argparse.Namespace) -> int:
    from pemn.training.models import list_model_families, list_models

    names = list_models(args.pattern)
    families = list_model_families(args.pattern)
    if not names and not families:
        raise UsageError(f"no model name matches {args.pattern!r}; `pemn models` lists them all")
    if args.json:
        _out(json.dumps(names))
        return 0
    for n in names:
        _out(n)
    if families:
        _out(f"sized families (any positive sizes, e.g. {families[0].split('-<')[0]}-256-8): {', '.join(families)}")
    return 0


def _dataset_rows() -> list[tuple[str, str]]:
    from pemn.training.data import dataset_info, list_datasets

    rows = []
    for name in list_datasets():
        try:
            desc = dataset_info(name).description
        except DatasetError:
            desc = ("character-level text: DIR/input.txt (UTF-8), first 90 % train / last 10 % validation (needs "
                    "--data-dir)" if name == "text" else
                    "class-per-folder RGB images: DIR/train/<class>/*.png|jpg and DIR/test/ (needs --data-dir)")
        rows.append((name, desc))
    return rows


def _cmd_datasets(args: argparse.Namespace) -> int:
    rows = _dataset_rows()
    if args.json:
        _out(json.dumps(dict(rows), indent=2))
        return 0
    width = max(len(n) for n, _ in rows)
    for name, desc in rows:
        _out(f"{name:<{width}}  {desc}")
    return 0


# --------------------------------------------------------------------------------------------- train


def _train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    from pemn.training import config as tm

    names = {f.name for f in dataclasses.fields(tm.TrainConfig)} - {"recipe"}
    return {k: v for k, v in vars(args).items() if k in names}


def _train_default_text() -> str:
    """``mlp on digits, rp``: what a bare ``pemn train`` trains (TrainConfig's defaults)."""
    from pemn.training.config import TrainConfig

    d = {f.name: _field_default(f) for f in dataclasses.fields(TrainConfig)}
    return f"{d['model']} on {d['dataset']}, {d['strategy']}"


def _recipe_names() -> str:
    from pemn.training.config import RECIPES

    return ", ".join(RECIPES)


def _cmd_train(args: argparse.Namespace) -> int:
    overrides = _train_overrides(args)
    cfg = _resolve(overrides, recipe=args.recipe, config_file=args.config)
    if args.tasks is not None or args.base is not None:  # many tasks on one prototype (pemn.training.tasks)
        if args.task is not None and args.base is None:
            raise UsageError("--task NAME goes with --base FILE.pemn (--tasks names its tasks itself)")
        if args.task_outputs is not None and args.tasks is None:
            raise UsageError("--task-outputs goes with --tasks")
        from pemn.training.tasks import train_tasks

        train_tasks(cfg, tasks=args.tasks, base=args.base, task=args.task, outputs=args.task_outputs, log=_out)
        return 0
    if args.task is not None:
        raise UsageError("--task NAME goes with --base FILE.pemn")
    from pemn.training.engine import train
    from pemn.training.outputs import report_lines

    result = train(cfg)
    if result.rank == 0:  # under torchrun, one report (rank 0's) instead of one per process
        for line in report_lines(cfg, result):
            _out(line)
    return 0


# --------------------------------------------------------------------------------------------- loading artifacts


def _artifact_kind(path: Path) -> tuple[Any, dict[str, Any] | None]:
    """The kind of the model file at ``path`` (:data:`pemn.training.artifacts.KINDS`) and its app metadata."""
    if path.is_dir():
        raise UsageError(f"{path} is a directory; give the artifact file inside it (e.g. {path}/model.pemn)")
    from pemn.training import artifacts as arts
    kind = arts.kind_of_file(path)
    return kind, arts.read_app(path, kind)


def _artifact_model(args: argparse.Namespace, app: dict[str, Any] | None, *,
                    data: bool = True) -> tuple[Any, dict[str, int], Any, str]:
    """``(model in eval mode, input shape, dataset info or None, registry model name)`` of ``args.artifact``
    (:func:`pemn.training.artifacts.open_model_file` with the command's flags; the dataset and data folder it used
    are written back into ``args``). A flag that contradicts the file or names nothing is a usage error."""
    from pemn.training.artifacts import open_model_file

    shape = {k: getattr(args, k, None) for k in ("num_classes", "in_channels", "image_size")}
    try:
        opened = open_model_file(args.artifact, app, model=args.model, dataset=args.dataset,
                                 data_dir=getattr(args, "data_dir", None), shape=shape, data=data)
    except (FormatError, DatasetError):
        raise
    except ValueError as e:  # --model / --dataset contradict the file, or name nothing
        raise UsageError(_one_line(e)) from None
    args.dataset, args.data_dir = opened.dataset, opened.data_dir
    return opened.model, opened.shape, opened.info, opened.name


# --------------------------------------------------------------------------------------------- eval


def _is_text(dataset: str | None, app: dict[str, Any] | None = None) -> bool:
    """Whether ``dataset`` (or else the model file's ``app``) is a character LM's (the workloads table says)."""
    from pemn.training.workloads import CharLM, workload_of_app, workload_of_dataset

    if dataset is not None and workload_of_dataset(dataset) is CharLM:
        return True
    return workload_of_app(app) is CharLM


def _cmd_eval_text(args: argparse.Namespace) -> int:
    """Validation loss of a language model: everything but the text comes from the artifact's metadata."""
    from pemn.training.sample import evaluate_lm_file

    m, app, text = evaluate_lm_file(args.artifact, args.data_dir, eval_subset=args.eval_subset,
                                    batch_size=args.batch_size, device=_device(args.device))
    if args.json:
        _out(json.dumps({"artifact": str(args.artifact), "model": app["model"], "dataset": "text",
                         "split": "validation", **m}))
    else:
        _out(f"{args.artifact}: validation loss {m['val_loss']:.4f} nats/char ({m['bits_per_char']:.4f} bits/char), "
             f"next-character accuracy {m['val_acc']:.2f} % ({m['characters']:,} characters of {text}, "
             f"{app['model']}, context {app['block_size']})")
    return 0


def _is_task_file(path: Path, kind: Any) -> bool:
    from pemn.artifact import read

    return kind.name == "pemn" and bool(read(path).tasks)


def _cmd_eval_tasks(args: argparse.Namespace, threads: int) -> int:
    """``pemn eval FILE --task NAME`` / ``--all-tasks`` / ``--infer-task`` on a multi-task file: each task on its own
    data (its dataset, permutation or classes, as the file records them)."""
    from pemn.training import tasks
    names = args.task or None
    common = {"names": names, "dataset": args.dataset, "data_dir": args.data_dir, "download": args.download,
              "eval_subset": args.eval_subset}
    if args.infer_task:
        batch = args.batch_size if args.batch_size_given else 128
        r = tasks.infer_tasks(args.artifact, batch_size=batch, method=args.infer_method, **common)
        if args.json:
            _out(json.dumps({"artifact": str(args.artifact), **r}))
        else:
            _out(f"{args.artifact}: task inference ({r['method']}, {r['tasks']} tasks, batches of {batch}): "
                 f"{r['identification_accuracy']:.2f} % of {r['batches']:,} batches identified; accuracy "
                 f"{r['accuracy_without_ids']:.2f} % without task ids, {r['accuracy_with_ids']:.2f} % with "
                 f"({r['examples']:,} test images)")
        return 0
    accs = tasks.evaluate_tasks(args.artifact, batch_size=args.batch_size, **common)
    mean = sum(accs.values()) / len(accs)
    if args.json:
        _out(json.dumps({"artifact": str(args.artifact), "tasks": accs, "mean_accuracy": mean}))
    else:
        for name, acc in accs.items():
            _out(f"{name}: test accuracy {acc:.2f} %")
        _out(f"{args.artifact}: {len(accs)} task{'s' if len(accs) != 1 else ''}, mean test accuracy {mean:.2f} % "
             f"({threads} CPU thread{'s' if threads != 1 else ''})")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    kind, app = _artifact_kind(Path(args.artifact))
    args.batch_size_given = args.batch_size is not None
    if args.batch_size is None:
        args.batch_size = _default_eval_batch()
    for flag in ("batch_size", "eval_subset"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    threads = args.threads_used
    if args.task or args.all_tasks or args.infer_task or _is_task_file(Path(args.artifact), kind):
        return _cmd_eval_tasks(args, threads)
    if _is_text(args.dataset, app):
        from pemn.training.artifacts import recorded_data_dir

        args.data_dir = recorded_data_dir(args.artifact, "text", args.data_dir)
        return _cmd_eval_text(args)
    if (app or {}).get("kind") == "transformers":
        raise UsageError(f"{args.artifact} holds a transformers {app['model']}; pemn eval measures image "
                         "classifiers and character-level language models on their datasets. Evaluate it in "
                         "Python on your task's data: model = pemn.load(FILE) rebuilds it (no code needed)")
    from pemn.training.evaluation import evaluate_test_split

    device = _device(args.device)
    model, _shape, info, model_name = _artifact_model(args, app)
    if info is None:
        raise UsageError("give --dataset NAME (the artifact does not say which data it was trained on)")
    acc, examples = evaluate_test_split(model, args.dataset, info, data_dir=args.data_dir, download=args.download,
                                        eval_subset=args.eval_subset, batch_size=args.batch_size, device=device,
                                        desc=f"eval ({progress.plural(threads, 'CPU thread')})", log=_err)
    if args.json:
        _out(json.dumps({"artifact": str(args.artifact), "kind": kind.name, "model": model_name,
                         "dataset": info.name, "split": "test", "examples": examples, "accuracy": acc}))
    else:
        _out(f"{args.artifact}: test accuracy {acc:.2f} % (top-1, {examples:,} {info.name} test "
             f"images, {model_name}, {kind.name} weights)")
    return 0


# --------------------------------------------------------------------------------------------- sample


def _cmd_sample(args: argparse.Namespace) -> int:
    from pemn.training.sample import build_lm, sample_text

    _, app = _artifact_kind(Path(args.artifact))
    if (app or {}).get("kind") == "transformers":
        raise UsageError(f"{args.artifact} holds a transformers {app['model']}; pemn sample writes with pemn's "
                         "character-level GPTs. Generate in Python: model = pemn.load(FILE) rebuilds it (no code "
                         "needed), then use transformers' model.generate with its tokenizer")
    if args.tokens < 0:
        raise UsageError(f"--tokens must be >= 0, got {args.tokens}")
    if args.temperature < 0 or args.temperature != args.temperature:
        raise UsageError(f"--temperature must be >= 0 (0: greedy), got {args.temperature}")
    if args.top_k is not None and args.top_k < 1:
        raise UsageError(f"--top-k must be >= 1, got {args.top_k}")
    prompt = args.prompt.encode().decode("unicode_escape") if args.escapes else args.prompt
    if not prompt:
        raise UsageError("--prompt must hold at least one character")
    model, app = build_lm(args.artifact)
    model.to(_device(args.device))
    text = sample_text(model, app, prompt, args.tokens, temperature=args.temperature, top_k=args.top_k,
                       seed=args.seed)
    if args.json:
        _out(json.dumps({"artifact": str(args.artifact), "model": app["model"], "prompt": prompt,
                         "tokens": args.tokens, "temperature": args.temperature, "top_k": args.top_k,
                         "seed": args.seed, "text": text}))
    else:
        _out(text)
    return 0


# --------------------------------------------------------------------------------------------- inspect


def _cmd_inspect(args: argparse.Namespace) -> int:
    import pemn

    path = Path(args.artifact)
    kind, _ = _artifact_kind(path)
    if kind.name != "pemn":
        return _inspect_plain(path, kind, as_json=args.json)
    s = pemn.summary(path, verbose=False)
    if args.json:
        _out(json.dumps(s.to_dict(), indent=2, default=str))
    else:
        _out(f"{path}  ({s.file_bytes:,} bytes)")
        _out("recorded in the file:")
        for label, text in _recorded_rows(s.recorded, s.config, s.tasks):
            _out(f"  {label:<14} {text}")
        _out("")
        _out(s.table())
    return 0


def _compact(value: Any, width: int = 100) -> str:
    """``value`` as one line of JSON, cut to ``width`` characters with a visible ``...``."""
    from pemn.summary import CUT_MARK

    text = json.dumps(value, separators=(", ", ": "), default=str)
    return text if len(text) <= width else text[:width - len(CUT_MARK)] + CUT_MARK


def _numbers(values: Any) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]" if isinstance(values, list) else _compact(values)


def _recorded_rows(recorded: dict[str, Any], config: dict[str, Any],
                   tasks: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """What a .pemn file says about itself, as (label, text) rows: the model and its arguments, the dataset and
    its preprocessing (``pemn train``'s app metadata), the method, the tasks, the versions that wrote it; every
    other app key as compact JSON."""
    app = dict(recorded.get("app") or {})
    rows: list[tuple[str, str]] = []
    model, kind = app.pop("model", None), app.pop("kind", None)
    args = app.pop("model_args", None)
    if model is None:
        rows.append(("model", "not recorded (saved without app metadata: rebuild the model in Python and "
                              "pemn.load(path, model))"))
    else:
        described = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in args.items()) if isinstance(args, dict) else ""
        rows.append(("model", f"{model}" + (f" ({described})" if described else "") + (f", {kind}" if kind else "")))
    vocab, block = app.pop("vocab", None), app.pop("block_size", None)
    if isinstance(vocab, str):
        rows.append(("vocabulary", f"{len(vocab)} characters, context {block}: {_compact(vocab, 60)}"))
    pre = app.pop("preprocessing", None)
    if isinstance(pre, dict):
        pre = dict(pre)
        rows.append(("dataset", str(pre.pop("dataset", "not recorded"))))
        shape = pre.pop("input_shape", None)
        parts = ["input " + "x".join(map(str, shape))] if isinstance(shape, list) else []
        scale, mean, std = pre.pop("scale", None), pre.pop("mean", None), pre.pop("std", None)
        if mean is not None and std is not None:
            parts.append(f"x = (pixels x {scale:.6g} - mean) / std" if isinstance(scale, int | float) else
                         "x = (pixels - mean) / std")
            parts.append(f"mean {_numbers(mean)}, std {_numbers(std)}")
        classes = pre.pop("classes", None)
        if isinstance(classes, list):
            parts.append(f"{len(classes)} classes {_compact(classes, 60)}")
        parts += [f"{k} {_compact(v, 60)}" for k, v in pre.items()]
        rows.append(("preprocessing", "; ".join(parts) or "not recorded"))
    method = ", ".join(f"{k} {v}" for k, v in config.items()
                       if k != "strategy" and v is not None and v is not False and v != [])
    rows.append(("method", f"{config.get('strategy', '?')}" + (f": {method}" if method else "")))
    if tasks:
        names = ", ".join(str(t["name"]) for t in tasks)
        rows.append(("tasks", f"{len(tasks)}: {_compact(names, 90) if len(names) > 90 else names}"))
    for key in sorted(app):
        rows.append((key, _compact(app[key])))
    rows.append(("written by", f"pemn {recorded.get('pemn_version') or '?'} (torch "
                               f"{recorded.get('torch_version') or '?'}), format version "
                               f"{recorded.get('format_version') or '?'}"))
    return rows


def _inspect_plain(path: Path, kind: Any, *, as_json: bool) -> int:
    """What a dense / pruned safetensors file holds (it has no masks, so no paper ratio)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_slice(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
            shapes = {k: list(t.get_shape()) for k, t in tensors.items()}
            dtypes = {k: str(t.get_dtype()) for k, t in tensors.items()}
    except Exception as e:  # safetensors raises its own error type for malformed files
        raise FormatError(f"{path}: corrupt safetensors file ({_one_line(e)})") from None
    numel = {k: 1 for k in shapes}
    for k, shape in shapes.items():
        for d in shape:
            numel[k] *= d
    info: dict[str, Any] = {"path": str(path), "kind": kind.name, "file_bytes": path.stat().st_size,
                            "tensors": len(shapes), "stored_values": sum(numel.values()),
                            "metadata": {k: v for k, v in meta.items() if k != "manifest"}}
    if kind.name == "quant":
        from pemn.training.quantfile import quant_info

        info["quantized"] = quant_info(path)
    if kind.name == "sparse" and "manifest" in meta:
        try:
            manifest = json.loads(meta["manifest"])
            kept = sum(int(e["kept"]) for e in manifest)
            prunable = 0
            for e in manifest:
                n = 1
                for d in e["shape"]:
                    n *= int(d)
                prunable += n
            info.update(kept_weights=kept, prunable_weights=prunable,
                        sparsity=1 - kept / prunable if prunable else None)
        except (ValueError, KeyError, TypeError):
            pass
    if as_json:
        _out(json.dumps(info, indent=2))
        return 0
    _out(f"{path}  ({info['file_bytes']:,} bytes): {kind.description}, not a pemn artifact (no masks or prototype)")
    _out(f"{info['tensors']} tensors, {info['stored_values']:,} stored values"
         + (f"; {info['kept_weights']:,} of {info['prunable_weights']:,} prunable weights survive "
            f"(sparsity {100 * info['sparsity']:.2f} %)" if info.get("sparsity") is not None else ""))
    q = info.get("quantized")
    if q is not None:
        pruned = (f", {q['stored_codes']:,} survivors in {q['pruned_layers']} pruned layers"
                  if q["pruned_layers"] else "")
        _out(f"{q['method']}: {q['quantized_weights']:,} weights in {q['layers']} layers at {q['bits_per_weight']:.3f} "
             f"bits per weight ({', '.join(q['codings'])} codes{pruned}); bytes: codes {q['code_bytes']:,} + "
             f"scales {q['scale_bytes']:,} + extras {q['extras_bytes']:,} = payload {q['payload_bytes']:,}; "
             f"index and header {q['file_bytes'] - q['payload_bytes']:,}")
    for k in sorted(shapes):
        _out(f"  {k:<40} {'x'.join(map(str, shapes[k])) or 'scalar':<20} {dtypes[k]}")
    return 0


# --------------------------------------------------------------------------------------------- export


def _cmd_export(args: argparse.Namespace) -> int:
    from pemn.training.export import export_image_model

    path = Path(args.artifact)
    kind, app = _artifact_kind(path)
    if _is_text(None, app):
        raise UsageError(f"{path} holds a language model; pemn export writes image classifiers (NCHW float input)")
    if (app or {}).get("kind") == "transformers":
        return _export_transformers(args, path, app)
    suffix = ".onnx" if args.format == "onnx" else ".safetensors"
    out = Path(args.output) if args.output else path.with_name(path.stem + (".dense" if suffix != ".onnx" else "")
                                                                   + suffix)
    if out.suffix != suffix:
        raise UsageError(f"--format {args.format} writes a {suffix} file (a safetensors state_dict, never a pickle), "
                         f"so name the output *{suffix}, not {out.name!r}")
    if out.resolve() == path.resolve():
        raise UsageError(f"the output {out} would overwrite the artifact; give another -o")
    model, shape, info, model_name = _artifact_model(args, app, data=False)
    export_image_model(model, shape, info, model_name, app, fmt=args.format, out=out, source=path,
                       source_kind=kind.name, data_dir=args.data_dir, log=_out)
    return 0


def _export_transformers(args: argparse.Namespace, path: Path, app: dict[str, Any]) -> int:
    """A transformers model's dense export (:func:`pemn.training.export.export_transformers`): a save_pretrained
    directory."""
    from pemn.training.export import export_transformers

    if args.format != "pt":
        raise UsageError(f"{path} holds a transformers {app['model']}; pemn export writes it as a transformers "
                         "directory (--format pt). For ONNX, export pemn.materialize(pemn.load(FILE)) with "
                         "torch.onnx.export or optimum, giving the inputs your task uses")
    out = Path(args.output) if args.output else path.with_name(path.stem + ".dense")
    if out.exists():
        raise UsageError(f"the output {out} exists; give a new directory with -o (a transformers model exports "
                         "as a save_pretrained directory: config.json + model.safetensors)")
    export_transformers(path, app, out, log=_out)
    return 0


def _cmd_quantize(args: argparse.Namespace) -> int:
    """Post-training quantization of a dense model file: quantize, calibrate on training images, save, evaluate."""
    import torch

    from pemn.training import artifacts as arts
    from pemn.training import evaluation
    from pemn.training.augment import build_eval_transform
    from pemn.training.data import load_dataset
    from pemn.training.quantfile import quant_info, save_quant
    from pemn.training.quantize import PTQ_CALIBRATION_IMAGES, post_training_quantize_
    path = Path(args.artifact)
    kind, app = _artifact_kind(path)
    if kind.name != "dense":
        raise UsageError(f"{path} is {kind.description}; pemn quantize takes a dense model.safetensors (a run of "
                         "pemn train --strategy dense)")
    out = Path(args.output) if args.output else path.with_name(f"{path.name.split('.')[0]}.{args.method}"
                                                                   f"{arts.KINDS['quant'].filename[len('model'):]}")
    if out.resolve() == path.resolve():
        raise UsageError(f"the output {out} would overwrite the dense model; give another -o")
    language = _is_text(None, app)
    images = labels = transform = None
    if language:  # a GPT has no BatchNorm: nothing to calibrate, nothing read but the file
        model, _, _ = arts.load_model(path)
    else:
        model, _, info, _ = _artifact_model(args, app)
        if info is None:
            raise UsageError("give --dataset NAME (the model file does not say which data it was trained on)")
        transform = build_eval_transform(info)
        images, _ = load_dataset(info.name, args.data_dir, split="train", download=args.download)
        if args.eval:
            labels_split = load_dataset(info.name, args.data_dir, split="test", download=args.download)
            test_images, labels = labels_split
    device = torch.device("cpu")
    dense_acc = None
    if labels is not None:
        dense_acc = evaluation.evaluate(model, test_images, labels, transform=transform, device=device)
    n = post_training_quantize_(model.eval(), args.method, images, transform)
    save_quant(model, out, args.method, extra_metadata=arts.app_metadata(app))
    loaded, _, _ = arts.load_model(out)
    acc = None
    if labels is not None:
        acc = evaluation.evaluate(loaded, test_images, labels, transform=transform, device=device)
    q = quant_info(out)
    used = 0 if images is None else min(len(images), PTQ_CALIBRATION_IMAGES)
    doc = {"artifact": str(path), "output": str(out), "method": args.method, "file_bytes": q["file_bytes"],
           "payload_bytes": q["payload_bytes"], "bits_per_weight": q["bits_per_weight"],
           "batchnorm_layers_calibrated": n, "calibration_images": used if n else 0,
           "dense_accuracy": dense_acc, "accuracy": acc}
    if args.json:
        _out(json.dumps(doc))
        return 0
    _out(f"wrote {out} ({q['file_bytes']:,} bytes, {args.method}: {q['bits_per_weight']:.3f} bits per weight; "
         + (f"BatchNorm statistics of {n} layers re-estimated on {used:,} training images)" if n
            else "no BatchNorm to calibrate)"))
    if acc is not None:
        _out(f"test accuracy {acc:.2f} % (the dense file: {dense_acc:.2f} %, {path.stat().st_size:,} bytes)")
    return 0


# --------------------------------------------------------------------------------------------- sweep


def _parse_sets(pairs: Sequence[str]) -> dict[str, Any]:
    from pemn.training.config import parse_settings

    try:
        return parse_settings(pairs)
    except ValueError as e:
        raise UsageError(f"--set {_one_line(e)}") from None


def _print_budget(report: dict[str, Any], out: str) -> None:
    from pemn.training.sweep import BUDGET_NAME, budget_lines

    for line in budget_lines(report):
        _out(line)
    _out(f"sweep: budget in {Path(out) / BUDGET_NAME} and sweep.csv's budget column")


def _cmd_sweep(args: argparse.Namespace) -> int:
    from pemn.training.sweep import (
        GRID_KEYS,
        apply_budget,
        build_grid,
        check_settings,
        resolve_points,
        run_sweep,
        stored_budget,
    )

    if args.max_bytes is not None and args.max_bytes <= 0:
        raise UsageError(f"--max-bytes {args.max_bytes}: give the byte budget as a positive number of bytes")
    if args.max_bytes is not None and not (args.strategies or args.dense or args.prune or args.quantize):
        # no grid: only the budget over the folder's finished runs
        try:
            report = apply_budget(args.out, args.max_bytes)
        except ValueError as e:
            raise UsageError(_one_line(e)) from None
        _print_budget(report, args.out)
        return 0
    base = _parse_sets(args.set or [])
    clash = sorted(GRID_KEYS & set(base))
    if clash:
        raise UsageError(f"--set {', '.join(clash)}: set by the sweep grid for every run; use the grid options "
                         "(--strategies, --ratios, --keeps, --prune, --compressions, --quantize, --out)")
    for key in ("model", "dataset", "epochs", "data_dir"):
        value = getattr(args, key)
        if value is not None:
            if key in base and base[key] != value:
                raise UsageError(f"--{key.replace('_', '-')} and --set {key}=... disagree")
            base[key] = value
    try:
        if args.seeds is not None and "seed" in base:
            raise ValueError("--seeds and --set seed=... disagree: give the seeds with --seeds only")
        points = build_grid(strategies=args.strategies, ratios=args.ratios, keeps=args.keeps, dense=args.dense,
                            prune=args.prune, compressions=args.compressions, seeds=args.seeds,
                            quantize=args.quantize, prune_quantize=args.prune_quantize, widths=args.widths)
    except ValueError as e:
        raise UsageError(_one_line(e)) from None
    # every point is resolved (and checked) before the first run
    if args.config is not None and not Path(args.config).is_file():
        raise UsageError(f"no config file at {args.config!r}")
    try:
        check_settings(Path(args.out), base, args.recipe, args.config, record=False)
        if args.max_bytes is None:
            stored_budget(Path(args.out))  # a folder's earlier budget applies again: refuse a broken one now
        resolve_points(points, base, args.out, recipe=args.recipe, config_file=args.config)
    except (ValueError, TypeError) as e:
        raise UsageError(_one_line(e)) from None
    plural = progress.plural
    _out(f"sweep: {plural(len(points), 'run')} -> {args.out}/")
    report = run_sweep(points, args.out, base, recipe=args.recipe, config_file=args.config,
                       log=_out, keep_going=args.keep_going, plot=not args.no_plot, figure_x=args.figure_x,
                       max_bytes=args.max_bytes)
    _out(f"sweep: {plural(len(report.rows), 'run')} done, {len(report.skipped)} already in {report.csv}"
         + (f", {len(report.failed)} failed" if report.failed else ""))
    if report.png is not None:
        _out(f"sweep: figure {report.png}")
    if report.seeds_csv is not None:
        from pemn.training.sweep import seed_summary_lines

        _out(f"sweep: mean ± std over seeds ({report.seeds_csv}):")
        for line in seed_summary_lines(report.csv):
            _out(line)
    if report.budget is not None:
        _print_budget(report.budget, args.out)
    for point, msg in report.failed:
        _err(f"pemn: error: sweep run {point.name} failed: {msg}")
    return 1 if report.failed else 0


# --------------------------------------------------------------------------------------------- parser


def _add_artifact_model_args(p: argparse.ArgumentParser, *, shape_flags: bool) -> None:
    p.add_argument("artifact", help="a .pemn artifact, or a dense model.safetensors (from strategy dense)")
    p.add_argument("--model", help="registry model name (see `pemn models`); default: the one the artifact records "
                                   "(or, for a file without app metadata, the config.json next to it)")
    p.add_argument("--dataset", help="dataset whose shape (and, for eval, test split) to use (see `pemn datasets`); "
                                     "default: the one the artifact records (or the config.json next to it)")
    p.add_argument("--data-dir", default=None, help="dataset folder (default: $PEMN_DATA_DIR or ./data)")
    if shape_flags:
        p.add_argument("--num-classes", type=int, default=None, help="classes (instead of or overriding --dataset)")
        p.add_argument("--in-channels", type=int, default=None, help="input channels")
        p.add_argument("--image-size", type=int, default=None, help="side of the square input images")


def _add_grid_flags(parser: argparse.ArgumentParser) -> None:
    """``pemn sweep``'s grid options, with the defaults of :func:`pemn.training.sweep.build_grid`."""
    from pemn.training import sweep as grid

    def listed(values: Sequence[Any]) -> str:
        return " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)

    parser.add_argument("--strategies", nargs="*", default=list(grid.PEMN_STRATEGIES), metavar="S",
                        help=f"PEMN strategies (default: {listed(grid.PEMN_STRATEGIES)}); none: no PEMN runs")
    parser.add_argument("--ratios", nargs="*", type=float, default=list(grid.DEFAULT_RATIOS), metavar="R",
                        help=f"rp ratios (default: {listed(grid.DEFAULT_RATIOS)})")
    parser.add_argument("--keeps", nargs="*", type=float, default=list(grid.DEFAULT_KEEPS), metavar="K",
                        help=f"kept fractions of the PEMN masks (default: {listed(grid.DEFAULT_KEEPS)})")
    parser.add_argument("--dense", action=argparse.BooleanOptionalAction, default=True,
                        help="also train the dense baseline (default: yes)")
    parser.add_argument("--prune", nargs="*", default=list(grid.PRUNE_METHODS), metavar="METHOD",
                        help=f"pruning baselines (default: {listed(grid.PRUNE_METHODS)}); give no value for none")
    parser.add_argument("--compressions", nargs="*", type=float, default=list(grid.DEFAULT_COMPRESSIONS), metavar="C",
                        help=f"pruning compressions (default: {listed(grid.DEFAULT_COMPRESSIONS)})")
    parser.add_argument("--quantize", nargs="*", default=[], metavar="METHOD",
                        help="quantized dense baselines (binary, ternary, int2, int4, int8 trained quantized; "
                             "ptq-int8, ptq-int4, ptq-int2 after training; default: none)")
    parser.add_argument("--prune-quantize", nargs="*", default=[], metavar="METHOD",
                        help="Deep Compression baselines: each pruning baseline once more with its survivors "
                             "quantized (ternary, int2, int4, int8; default: none)")
    parser.add_argument("--widths", nargs="+", type=float, default=None, metavar="W",
                        help="train every grid point at each width, a multiple of the model's (0.5: half the "
                             "channels; 1: the model; folders <point>-w<W>; default: 1)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, metavar="SEED",
                        help="train every grid point once per seed (folders <point>-s<seed>) and write "
                             f"{grid.SEEDS_CSV_NAME}: mean ± std per setting (default: one run, the common seed)")


def build_parser() -> argparse.ArgumentParser:
    """The full ``pemn`` argument parser (a new one per call; no global state)."""
    parser = _Parser(
        prog=PROG, allow_abbrev=False,
        description="Parameter-Efficient Masking Networks: train, evaluate, inspect, export and sweep "
                    "networks stored as a seed, a tiny prototype and 1-bit masks.")
    parser.add_argument("--version", action="version", version=f"pemn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("train", help=f"train a model (default: {_train_default_text()}) and save its artifact",
                       usage="pemn train [--recipe NAME] [--config FILE.json] [--OPTION VALUE ...]",
                       description="Train a registry model on a dataset and save the artifact. Every training "
                                   "option has a flag; each comes from the defaults < --recipe < --config < the "
                                   "flags you type.")
    from pemn.training.flags import add_train_flags  # imports torch (TrainConfig's tables): not for --version

    add_train_flags(p)
    tasks = p.add_argument_group("many tasks on one prototype (one file, each task its masks and extras)")
    tasks.add_argument("--tasks", default=None, metavar="KIND:N",
                       help="train N tasks in sequence into OUT/model.pemn: permuted:N (N fixed pixel permutations "
                            "of --dataset) or split:N (its classes cut into N groups, each task its own head)")
    tasks.add_argument("--base", default=None, metavar="FILE.pemn",
                       help="add a task (--task NAME, trained on --dataset of the same input shape) to this file")
    tasks.add_argument("--task", default=None, metavar="NAME", help="the name of the task --base adds")
    tasks.add_argument("--task-outputs", type=int, default=None, metavar="K",
                       help="--tasks: give the model K outputs, more than the classes (SupSup's superfluous neurons, "
                            "trained toward zero probability: they make pemn eval --infer-task reliable)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="test accuracy of an artifact", description="Build the model from the registry "
                       "with the dataset's shape, load the artifact, and print its top-1 test accuracy.")
    _add_artifact_model_args(p, shape_flags=False)
    p.add_argument("--download", action="store_true", help="download missing dataset files")
    p.add_argument("--batch-size", type=int, default=None, help="evaluation batch size (default: "
                   f"{_default_eval_batch()}, the training default)")
    p.add_argument("--eval-subset", type=int, default=None, metavar="N",
                   help="evaluate the first N test images only (a language model: the first N validation "
                        "characters)")
    _add_threads_flag(p)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1... (default: auto)")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.add_argument("--task", action="append", default=None, metavar="NAME",
                   help="multi-task file: evaluate this task on its own data (repeatable)")
    p.add_argument("--all-tasks", action="store_true", help="multi-task file: evaluate every task (the default there)")
    p.add_argument("--infer-task", action="store_true",
                   help="multi-task file: identify each test batch's task without its id (SupSup's one-shot rule) "
                        "and report identification accuracy and accuracy without ids (batch size default 128)")
    p.add_argument("--infer-method", choices=("one-shot", "min-entropy"), default="one-shot",
                   help="--infer-task rule: one-shot (SupSup's entropy gradient of the superposed masks: one forward "
                        "and backward pass) or min-entropy (each task's own model, the most confident wins: one "
                        "forward pass per task)")
    p.set_defaults(func=_threaded(_cmd_eval))

    p = sub.add_parser("sample", help="generate text from a language model (trained with --dataset text)",
                       description="Rebuild the language model from its file (the vocabulary and context length "
                                   "travel in it) and continue the prompt; the same seed gives the same text.")
    p.add_argument("artifact", help="model.pemn, model.safetensors or model.sparse.safetensors of a text run")
    p.add_argument("--prompt", default="\n", help="text to continue (default: a newline); every character must "
                                                  "be in the model's vocabulary")
    p.add_argument("--escapes", action="store_true", help="read backslash escapes in --prompt (e.g. \\n)")
    p.add_argument("--tokens", type=int, default=300, help="characters to generate (default: 300)")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature; 0 = greedy (default: 1)")
    p.add_argument("--top-k", type=int, default=None, help="sample among the K most likely characters only")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling generator (default: 0)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1... (default: cpu)")
    _add_threads_flag(p)
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(func=_threaded(_cmd_sample))

    p = sub.add_parser("inspect", help="sizes and compression ratios of an artifact")
    p.add_argument("artifact", help="a .pemn artifact")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("export", help="export an artifact as a plain safetensors state_dict or ONNX",
                       description="Load the artifact into a fresh registry model, bake it into plain layers "
                                   "(pemn.materialize) and export it.")
    _add_artifact_model_args(p, shape_flags=True)
    p.add_argument("--format", choices=("pt", "onnx"), required=True,
                   help="pt: dense state_dict as .safetensors (+ .json sidecar), no pickle; onnx: ONNX graph, "
                        "checked with onnxruntime when installed")
    p.add_argument("-o", "--output", default=None, help="output file (default: next to the artifact, "
                                                        "<stem>.dense.safetensors or <stem>.onnx)")
    _add_threads_flag(p)
    p.set_defaults(func=_threaded(_cmd_export))

    p = sub.add_parser("quantize", help="quantize a dense model file after training (ptq-int8/int4/int2)",
                       description="Post-training quantization of a dense model.safetensors: every Conv/Linear/"
                                   "Embedding weight per output channel, BatchNorm statistics re-estimated on "
                                   "training images, written as a pemn-quant file; test accuracy before and after.")
    _add_artifact_model_args(p, shape_flags=False)
    p.add_argument("--method", required=True, choices=("ptq-int8", "ptq-int4", "ptq-int2"),
                   help="the post-training method")
    p.add_argument("-o", "--output", default=None,
                   help="the quantized file (default: beside the input, e.g. model.ptq-int4.quant.safetensors)")
    p.add_argument("--download", action="store_true", help="download missing dataset files")
    p.add_argument("--eval", action=argparse.BooleanOptionalAction, default=True,
                   help="evaluate the dense and the quantized model on the test split (default: yes)")
    _add_threads_flag(p)
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(func=_threaded(_cmd_quantize))

    p = sub.add_parser("models", help="list registry model names")
    p.add_argument("pattern", nargs="?", default=None, help="shell-style filter, e.g. 'vit-*'")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("datasets", help="list datasets")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_datasets)

    p = sub.add_parser("sweep", help="train a grid of strategies and baselines; write sweep.csv and sweep.png",
                       description="Train every combination in this process (one sub folder each), append a row "
                                   "to OUT/sweep.csv as each run ends (a re-run skips finished rows) and draw "
                                   "OUT/sweep.png: accuracy vs file bytes with the Pareto front (--figure-x "
                                   "ratio: vs the paper's size compression ratio).")
    p.add_argument("--model", default=None, help="registry model name (default: the training default)")
    p.add_argument("--dataset", default=None, help="dataset name (default: the training default)")
    p.add_argument("--data-dir", default=None, help="dataset folder of every run (default: $PEMN_DATA_DIR or ./data)")
    _add_grid_flags(p)
    p.add_argument("--epochs", type=int, default=None, help="epochs of every run")
    p.add_argument("--recipe", default=None, metavar="NAME", help=f"a named recipe ({_recipe_names()})")
    p.add_argument("--config", default=None, metavar="FILE.json", help="a JSON file of training options")
    p.add_argument("--set", nargs="+", action="extend", default=None, metavar="KEY=VALUE",
                   help="any other training option for every run, e.g. --set lr=0.05 train_subset=500")
    p.add_argument("--out", required=True, help="sweep folder (sweep.csv, sweep.png, one sub folder per run)")
    p.add_argument("--keep-going", action="store_true", help="log a failed run and go on instead of stopping")
    p.add_argument("--no-plot", action="store_true", help="do not draw sweep.png")
    p.add_argument("--figure-x", choices=("bytes", "ratio"), default="bytes",
                   help="sweep.png's x axis: the saved file's bytes (log scale, the Pareto front drawn; default) "
                        "or the paper's size compression ratio")
    p.add_argument("--max-bytes", type=int, default=None, metavar="N",
                   help="a byte budget: print the most accurate file of at most N bytes and the best of each method, "
                        "mark them in sweep.csv's budget column and write sweep_budget.json (kept for later runs in "
                        "the folder); with no grid (--strategies --no-dense --prune) only that, over the finished "
                        "runs")
    p.set_defaults(func=_cmd_sweep)
    for command in sub.choices.values():  # `--epoch 1` is not `--epochs 1`: options are spelled out in full
        command.allow_abbrev = False
    parser.set_defaults(commands=sub.choices)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``pemn`` command line with ``argv`` (default ``sys.argv[1:]``); returns the exit code
    (:data:`EXIT_CODES`)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--version"]:  # answered before the parser is built: that imports torch
        _out(f"{PROG} {__version__}")
        return EXIT_OK
    try:
        parser = build_parser()
        try:
            args, extras = parser.parse_known_args(argv)
            if extras:
                commands = getattr(args, "commands", None) or {}
                commands.get(getattr(args, "command", None), parser).unrecognized(extras)
        except SystemExit as e:  # argparse has printed its message (or --help)
            return e.code if isinstance(e.code, int) else (EXIT_OK if e.code is None else EXIT_USAGE)
        func: Callable[[argparse.Namespace], int] = args.func
        return func(args)
    except UsageError as e:
        _err(f"{PROG}: error: {_one_line(e)}")
        return EXIT_USAGE
    except ModuleNotFoundError as e:  # a package of the training stack (pemn[cli]) is not installed
        _err(f"{PROG}: error: the training stack is not available ({e}); the train, eval and sweep commands need "
             "pemn[cli]")
        return EXIT_USAGE
    except BrokenPipeError:  # `pemn ... | head`: the reader left; stop quietly, as other CLIs do
        with contextlib.suppress(OSError, ValueError, AttributeError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush does not fail again
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt as e:  # Ctrl-C, or pemn.training.engine's TrainingInterrupted (checkpoint saved)
        # said once: the engine has printed TrainingInterrupted's message (rank 0), and under torchrun only
        # rank 0 speaks for the run
        if not getattr(e, "logged", False) and os.environ.get("RANK", "0") == "0":
            _err(f"{PROG}: {_one_line(e) if str(e) else 'interrupted'}")
        code = getattr(e, "exit_code", EXIT_SIGNAL_BASE + 2)
        return code if isinstance(code, int) else EXIT_SIGNAL_BASE + 2
    except (PEMNError, ValueError, OSError, RuntimeError) as e:  # one line, and the code of its kind
        _err(f"{PROG}: error: {_one_line(e)}")
        return _exit_code(e)
