"""The ``pemn`` command line: train, evaluate, inspect, export and sweep PEMN models.

``main(argv)`` parses with stdlib argparse, keeps no global state and returns an exit code, one per kind of
error (:data:`EXIT_CODES`, the table in README.md). Errors print one ``pemn: error: ...`` line on stderr (a mistyped
option names the closest one), never a traceback.

Each ``_cmd_<command>`` is argument parsing only: it checks its flags, calls one named function of the application
(:func:`pemn.training.measure.evaluate_model_file`, :func:`pemn.training.inspect_report.inspect_lines`,
:func:`pemn.training.ptq_file.quantize_model_file`, :func:`pemn.training.export.export_model_file`,
:func:`pemn.training.sample.sample_file`, :func:`pemn.training.sweep_plan.plan_sweep`, ``train``...), prints the
report it returns and returns the exit code; what the application refuses is an
:class:`~pemn.training.errors.OptionError` (exit code 2, as a bad flag). tests/test_cli_usage.py keeps it so.

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
from pemn.errors import PEMNError
from pemn.training.progress import plural

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
     ("pemn.training.cli.UsageError", "pemn.training.errors.OptionError", "pemn.errors.ConversionError",
      "pemn.training.models.ModelError")),
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
        from pemn.training.dist import using_threads

        with using_threads(args.threads) as args.threads_used:
            return command(args)

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


def _cmd_datasets(args: argparse.Namespace) -> int:
    from pemn.training.data import dataset_descriptions

    rows = dataset_descriptions()
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


# --------------------------------------------------------------------------------------------- model files


def _print_report(record: dict[str, Any], lines: Sequence[str], *, as_json: bool) -> int:
    """A command's report: its JSON object on one line (``--json``) or its text lines."""
    if as_json:
        _out(json.dumps(record))
    else:
        for line in lines:
            _out(line)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from pemn.training.artifacts import file_kind_and_app
    from pemn.training.evaluation import EvalRequest
    from pemn.training.measure import evaluate_model_file

    kind, app = file_kind_and_app(args.artifact)
    for flag in ("batch_size", "eval_subset"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    report = evaluate_model_file(EvalRequest(
        args.artifact, kind, app, model=args.model, dataset=args.dataset, data_dir=args.data_dir,
        download=args.download, batch_size=args.batch_size, eval_subset=args.eval_subset, device=args.device,
        threads=args.threads_used, tasks=tuple(args.task or ()), all_tasks=args.all_tasks,
        infer_task=args.infer_task, infer_method=args.infer_method,
        infer_objective=args.infer_objective, log=_err))
    return _print_report(report.record, report.lines, as_json=args.json)


def _cmd_sample(args: argparse.Namespace) -> int:
    from pemn.training.sample import sample_file

    prompt = args.prompt.encode().decode("unicode_escape") if args.escapes else args.prompt
    record = sample_file(args.artifact, prompt, tokens=args.tokens, temperature=args.temperature, top_k=args.top_k,
                         seed=args.seed, device=args.device)
    return _print_report(record, [record["text"]], as_json=args.json)


def _cmd_inspect(args: argparse.Namespace) -> int:
    from pemn.training.inspect_report import inspect_lines

    for line in inspect_lines(args.artifact, as_json=args.json):
        _out(line)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from pemn.training.export import export_model_file

    shape = {k: getattr(args, k) for k in ("num_classes", "in_channels", "image_size")}
    export_model_file(args.artifact, fmt=args.format, output=args.output, model=args.model, dataset=args.dataset,
                      data_dir=args.data_dir, shape=shape, log=_out)
    return 0


def _cmd_recode(args: argparse.Namespace) -> int:
    from pemn.training.recode_file import recode_model_file

    report = recode_model_file(args.artifact, args.coding, output=args.output)
    return _print_report(report.record, report.lines, as_json=args.json)


def _cmd_quantize(args: argparse.Namespace) -> int:
    from pemn.training.ptq_file import quantize_model_file

    report = quantize_model_file(args.artifact, args.method, output=args.output, model=args.model,
                                 dataset=args.dataset, data_dir=args.data_dir, download=args.download,
                                 evaluate=args.eval)
    return _print_report(report.record, report.lines, as_json=args.json)


# --------------------------------------------------------------------------------------------- sweep


def _cmd_sweep(args: argparse.Namespace) -> int:
    from pemn.training.sweep import run_sweep
    from pemn.training.sweep_plan import GRID_OPTIONS, SHARED_FLAGS, budget_only_lines, plan_sweep, sweep_lines

    if args.max_bytes is not None and args.max_bytes <= 0:
        raise UsageError(f"--max-bytes {args.max_bytes}: give the byte budget as a positive number of bytes")
    if args.max_bytes is not None and not (args.strategies or args.dense or args.prune or args.quantize):
        for line in budget_only_lines(args.out, args.max_bytes):  # no grid: the budget over the finished runs
            _out(line)
        return 0
    points, base = plan_sweep(args.out, settings=args.set or [], flags={k: getattr(args, k) for k in SHARED_FLAGS},
                              grid={k: getattr(args, k) for k in GRID_OPTIONS}, recipe=args.recipe,
                              config_file=args.config, max_bytes=args.max_bytes)
    _out(f"sweep: {plural(len(points), 'run')} -> {args.out}/")
    report = run_sweep(points, args.out, base, recipe=args.recipe, config_file=args.config, log=_out,
                       keep_going=args.keep_going, plot=not args.no_plot, figure_x=args.figure_x,
                       max_bytes=args.max_bytes)
    for line in sweep_lines(report, args.out):
        _out(line)
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
                            "trained toward zero probability; one-shot --infer-task did not need them: RESULTS.md)")
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
    # pemn.superpose.METHODS and OBJECTIVES (not imported here: the parser loads no torch; a test checks they agree)
    p.add_argument("--infer-method", choices=("one-shot", "min-entropy"), default="one-shot",
                   help="--infer-task rule: one-shot (SupSup's gradient of the superposed masks: one forward "
                        "and backward pass) or min-entropy (each task's own model, the most confident wins: one "
                        "forward pass per task)")
    p.add_argument("--infer-objective", choices=("information", "entropy"), default="information",
                   help="what one-shot differentiates: information (the mean output entropy minus the entropy of the "
                        "batch's mean output: confident and spread over the classes) or entropy (SupSup's: the mean "
                        "output entropy alone)")
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

    p = sub.add_parser("recode", help="re-code an artifact's masks losslessly (e.g. entropy -> context)",
                       description="Write the artifact with its masks in another coding: the same model bit for "
                                   "bit (masks decoded, re-coded and checked; prototype, extras and metadata "
                                   "kept), no retraining. context masks are never larger than entropy ones, "
                                   "10-20 %% smaller on masks with per-unit structure (LeNet-5's).")
    p.add_argument("artifact", help="a .pemn artifact (one task or many)")
    from pemn.artifact import CODINGS  # torch is imported by now (add_train_flags)

    p.add_argument("--coding", choices=CODINGS, default="context", help="the new mask coding (default: context)")
    p.add_argument("-o", "--output", default=None, help="output file, written atomically; may be the input "
                                                        "(default: next to it, <stem>.<coding>.pemn)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_cmd_recode)

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
                                   "OUT/sweep.png: accuracy (a language model: validation loss) vs file bytes "
                                   "with the Pareto front (--figure-x ratio: vs the paper's size compression "
                                   "ratio).")
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
                   help="a byte budget: print the most accurate file (a language model: the lowest validation loss) "
                        "of at most N bytes and the best of each method, "
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
