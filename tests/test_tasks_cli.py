"""``pemn train --tasks`` / ``--base --task``, ``pemn eval --task / --all-tasks / --infer-task``, ``pemn inspect`` on
multi-task files, and the one-shot task inference of the API (pemn.superpose)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

import pemn
from cli_run import run
from pemn.artifact import read
from pemn.superpose import METHODS, OBJECTIVES, Superposition, infer_task
from pemn.training.tasks import TaskSpec, parse_tasks, task_data

COMMON = ["--model", "tiny-mlp", "--dataset", "digits", "--strategy", "mask", "--keep", "0.2", "--coding", "entropy",
          "--prototype", "seed", "--steps", "30", "--lr", "0.03", "--schedule", "cosine", "--threads", "1"]


@pytest.fixture(scope="module")
def permuted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    out = tmp_path_factory.mktemp("tasks") / "perm"
    code, stdout, stderr = run(["train", "--tasks", "permuted:3", *COMMON, "--out", str(out)])
    assert code == 0, stderr
    return {"out": out, "file": out / "model.pemn", "stdout": stdout,
            "result": json.loads((out / "result.json").read_text())}


def test_parse_tasks() -> None:
    perm = parse_tasks("permuted:3", "mnist", 10, 0)
    assert [t.name for t in perm] == ["permuted-0", "permuted-1", "permuted-2"]
    assert len({t.permutation for t in perm}) == 3 and perm == parse_tasks("permuted:3", "mnist", 10, 0)
    split = parse_tasks("split:5", "mnist", 10, 0)
    assert [t.classes for t in split] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    for bad in ("permuted", "split:0", "rotated:3", "split:6"):
        with pytest.raises(ValueError):
            parse_tasks(bad, "mnist", 10, 0)


def test_task_data_permutes_pixels_and_splits_classes() -> None:
    x = torch.arange(2 * 1 * 2 * 2).view(2, 1, 2, 2)
    y = torch.tensor([3, 5])
    px, py = task_data(TaskSpec("p", "d", permutation=1), x, y)
    assert torch.equal(py, y) and sorted(px[0].flatten().tolist()) == [0, 1, 2, 3] and not torch.equal(px, x)
    sx, sy = task_data(TaskSpec("s", "d", classes=(5, 4)), x, y)
    assert torch.equal(sy, torch.tensor([0])) and torch.equal(sx, x[1:])


def test_train_tasks_writes_one_file_with_every_task(permuted: dict[str, object]) -> None:
    art = read(permuted["file"])
    assert [t.name for t in art.tasks] == ["permuted-0", "permuted-1", "permuted-2"]
    result = permuted["result"]
    assert result["reloaded_equal_after_training"] is True  # every task from the file = right after training
    assert result["accuracy_from_file"] == result["accuracy_after_training"]
    lines = (permuted["out"] / "tasks.jsonl").read_text().splitlines()
    assert [json.loads(row)["task"] for row in lines] == ["permuted-0", "permuted-1", "permuted-2"]
    assert all(t.app["dataset"] == "digits" and "permutation" in t.app for t in art.tasks)


def test_eval_all_tasks_and_one_task(permuted: dict[str, object]) -> None:
    code, out, err = run(["eval", str(permuted["file"]), "--all-tasks", "--json", "--threads", "1"])
    assert code == 0, err
    accs = json.loads(out)["tasks"]
    assert accs == permuted["result"]["accuracy_from_file"]
    code, out, err = run(["eval", str(permuted["file"]), "--task", "permuted-1", "--json", "--threads", "1"])
    assert code == 0, err
    assert json.loads(out)["tasks"] == {"permuted-1": accs["permuted-1"]}
    code, out, err = run(["eval", str(permuted["file"]), "--task", "nope", "--threads", "1"])
    assert code != 0 and "no task 'nope'" in err and "Traceback" not in err


def test_a_multi_task_file_is_measured_task_by_task(permuted: dict[str, object]) -> None:
    """pemn eval's application function sends a file holding tasks to the tasks' evaluation, whatever the
    request names (every task by default; the text is one line per task and the mean)."""
    from pemn.training.artifacts import file_kind_and_app
    from pemn.training.evaluation import EvalRequest
    from pemn.training.measure import evaluate_model_file
    from pemn.training.tasks import holds_tasks

    path = str(permuted["file"])
    kind, app = file_kind_and_app(path)
    assert holds_tasks(path)
    report = evaluate_model_file(EvalRequest(path, kind, app, threads=2))
    accs = permuted["result"]["accuracy_from_file"]
    assert report.record == {"artifact": path, "tasks": accs, "mean_accuracy": sum(accs.values()) / 3}
    assert report.lines[:3] == [f"{name}: test accuracy {acc:.2f} %" for name, acc in accs.items()]
    mean = report.record["mean_accuracy"]
    assert report.lines[3] == f"{path}: 3 tasks, mean test accuracy {mean:.2f} % (2 CPU threads)"
    one = evaluate_model_file(EvalRequest(path, kind, app, tasks=("permuted-1",), threads=1))
    assert one.record["tasks"] == {"permuted-1": accs["permuted-1"]} and one.lines[-1].endswith("(1 CPU thread)")


def test_eval_infer_task(permuted: dict[str, object]) -> None:
    code, out, err = run(["eval", str(permuted["file"]), "--infer-task", "--json", "--threads", "1"])
    assert code == 0, err
    r = json.loads(out)
    assert r["tasks"] == 3 and r["batch_size"] == 128 and 0 <= r["identification_accuracy"] <= 100
    assert r["accuracy_without_ids"] <= r["accuracy_with_ids"] + 1e-9 or r["identification_accuracy"] < 100


def test_inspect_lists_tasks(permuted: dict[str, object]) -> None:
    code, out, err = run(["inspect", str(permuted["file"])])
    assert code == 0, err
    assert "3 tasks" in out and "permuted-2" in out
    code, out, _ = run(["inspect", str(permuted["file"]), "--json"])
    rows = json.loads(out)["tasks"]
    assert [r["name"] for r in rows] == ["permuted-0", "permuted-1", "permuted-2"]
    for r in rows:
        assert r["mask_bytes"] <= r["entropy_bound_bytes"] + 4 * 3  # a range coder's word per layer at most


def test_base_adds_a_task_keeping_the_others(permuted: dict[str, object], tmp_path: Path) -> None:
    path = tmp_path / "m.pemn"
    path.write_bytes(Path(permuted["file"]).read_bytes())
    before = {t.name: {k: v.numpy().tobytes() for k, v in t.tensors.items()} for t in read(path).tasks}
    code, _, err = run(["train", "--base", str(path), "--task", "plain", *COMMON])
    assert code == 0, err
    art = read(path)
    assert [t.name for t in art.tasks] == ["permuted-0", "permuted-1", "permuted-2", "plain"]
    after = {t.name: {k: v.numpy().tobytes() for k, v in t.tensors.items()} for t in art.tasks}
    assert {k: after[k] for k in before} == before
    code, _, err = run(["train", "--base", str(path), "--task", "plain", *COMMON])
    assert code != 0 and "already has a task 'plain'" in err


def test_split_tasks_have_their_own_heads(tmp_path: Path) -> None:
    out = tmp_path / "split"
    code, _, err = run(["train", "--tasks", "split:5", *COMMON, "--out", str(out)])
    assert code == 0, err
    art = read(out / "model.pemn")
    assert [t.num_classes for t in art.tasks] == [2] * 5 and art.head == "3"
    result = json.loads((out / "result.json").read_text())
    assert result["reloaded_equal_after_training"] is True
    assert result["min_accuracy"] > 50  # two-way tasks, each above chance


def test_usage_errors(tmp_path: Path) -> None:
    code, _, err = run(["train", "--task", "x", *COMMON])
    assert code == 2 and "--base" in err
    code, _, err = run(["train", "--tasks", "rotated:3", *COMMON, "--out", str(tmp_path / "r")])
    assert code != 0 and "permuted:N or split:N" in err and "Traceback" not in err


def _toy_tasks(ntasks: int, keep: float, lr: float) -> tuple[torch.nn.Module, object]:
    """``ntasks`` tasks on one converted MLP, each a fixed permutation of the features of one 4-class Gaussian problem
    (Permuted MNIST in small), trained 60 Adam steps at ``lr``; returns the model and ``batch(task, seed)``."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
    pemn.convert_(model, pemn.PEMNConfig(strategy="mask", keep=keep, init="signed_constant"))
    centers = torch.randn(4, 20, generator=torch.Generator().manual_seed(0)) * 3
    perms = [torch.randperm(20, generator=torch.Generator().manual_seed(100 + i)) for i in range(ntasks)]

    def batch(task: int, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        y = torch.randint(0, 4, (64,), generator=g)
        return (centers[y] + torch.randn(64, 20, generator=g))[:, perms[task]], y

    for t in range(ntasks):
        pemn.add_task(model, f"t{t}", activate=True)
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
        for step in range(60):
            x, y = batch(t, 1000 * t + step + 100)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        pemn.freeze_masks(model)
    pemn.delete_task(model, "default")
    return model, lambda task, seed: batch(task, seed)[0]


@pytest.fixture(scope="module")
def gentle() -> tuple[torch.nn.Module, object]:
    return _toy_tasks(4, keep=0.5, lr=0.01)


@pytest.mark.parametrize(("method", "objective"), [("one-shot", "information"), ("one-shot", "entropy"),
                                                   ("min-entropy", "information")])
def test_each_rule_identifies_the_task_of_every_batch(gentle: tuple, method: str, objective: str) -> None:
    """Four tasks trained gently (keep 0.5, lr 0.01, the regime one-shot needs): every rule names the task of
    each of 40 batches, and the model is left as it was."""
    model, batch = gentle
    pemn.set_task(model, "t1")
    sp = Superposition(model)
    assert sp.names == ["t0", "t1", "t2", "t3"]
    assert sum(sp.infer(batch(t, s), method, objective) == f"t{t}" for t in range(4) for s in range(10)) == 40
    assert infer_task(model, batch(3, 5), method=method, objective=objective) == "t3"
    assert pemn.active_task(model) == "t1"
    with pytest.raises(ValueError, match="objective"):
        sp.objective_gradient(batch(0, 0), "loss")
    with pytest.raises(ValueError, match="method"):
        sp.infer(batch(0, 0), "guess")


@pytest.mark.slow  # trains eight small tasks
def test_the_information_objective_beats_the_entropy_alone() -> None:
    """Eight tasks whose training moved their masks further (lr 0.05): SupSup's entropy gradient names the task of
    49 of 80 batches, the information objective (which does not reward making a whole batch one confident class)
    68; min-entropy (N forward passes) all 80. RESULTS.md "Many tasks" has the same on Permuted MNIST."""
    model, batch = _toy_tasks(8, keep=0.5, lr=0.05)
    sp = Superposition(model)
    hits = {objective: sum(sp.infer(batch(t, s), "one-shot", objective) == f"t{t}" for t in range(8)
                           for s in range(10)) for objective in OBJECTIVES}
    assert hits["information"] >= 64 and hits["information"] >= hits["entropy"] + 12, hits
    assert sum(sp.infer(batch(t, s), "min-entropy") == f"t{t}" for t in range(8) for s in range(10)) == 80


def test_the_cli_offers_the_rules_of_pemn_superpose() -> None:
    from pemn.training.cli import build_parser

    eval_parser = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["eval"]
    flags = {a.dest: a for a in eval_parser._actions}
    assert tuple(flags["infer_method"].choices) == METHODS and flags["infer_method"].default == METHODS[0]
    assert tuple(flags["infer_objective"].choices) == OBJECTIVES and flags["infer_objective"].default == OBJECTIVES[0]


def test_mask_drift_measures_each_task_against_its_own_initial_masks(permuted: dict[str, object], tmp_path: Path
                                                                      ) -> None:
    """scripts/mask_drift.py on a --tasks run: each task against the masks add_task gave it. Trained at lr 1e-9 no
    task's mask leaves its initialisation (0 exactly: the script rebuilt the right initial scores), trained
    normally every task's does."""
    from conftest import load_script

    drift = load_script("scripts/mask_drift.py").drift
    moved = drift(permuted["out"])
    assert list(moved["tasks"]) == ["permuted-0", "permuted-1", "permuted-2"] and moved["chance"] == 0.8
    assert all(0 < t["moved"] <= 1 for t in moved["tasks"].values()) and moved["moved"] > 0
    out = tmp_path / "still"
    code, _, err = run(["train", "--tasks", "permuted:2", *COMMON, "--lr", "1e-9", "--out", str(out)])
    assert code == 0, err
    still = drift(out)
    assert still["moved"] == 0 and all(t["moved"] == 0 for t in still["tasks"].values())


def test_resume_trains_the_missing_tasks_as_an_uninterrupted_run(permuted: dict[str, object], tmp_path: Path
                                                                    ) -> None:
    out = tmp_path / "perm"
    code, _, err = run(["train", "--tasks", "permuted:2", *COMMON, "--out", str(out)])
    assert code == 0, err
    code, _, err = run(["train", "--tasks", "permuted:3", *COMMON, "--out", str(out)])
    assert code != 0 and "--resume" in err
    code, _, err = run(["train", "--tasks", "permuted:3", *COMMON, "--out", str(out), "--resume"])
    assert code == 0, err
    resumed, whole = read(out / "model.pemn"), read(permuted["file"])
    assert [t.name for t in resumed.tasks] == [t.name for t in whole.tasks]
    for a, b in zip(resumed.tasks, whole.tasks, strict=True):
        assert a.tensors.keys() == b.tensors.keys()
        assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors), a.name


def test_task_outputs_give_every_task_k_outputs_and_inference_runs_on_them(tmp_path: Path) -> None:
    out = tmp_path / "s"
    code, _, err = run(["train", "--tasks", "permuted:3", "--task-outputs", "30", *COMMON, "--steps", "60",
                        "--out", str(out)])
    assert code == 0, err
    assert read(out / "model.pemn").tasks[0].artifact.manifest[-1]["shape"][0] == 30  # the head: 30 outputs
    code, out_, err = run(["eval", str(out / "model.pemn"), "--infer-task", "--batch-size", "64", "--json",
                           "--threads", "1"])
    assert code == 0, err
    assert json.loads(out_)["identification_accuracy"] >= 90
    code, out_, err = run(["eval", str(out / "model.pemn"), "--infer-task", "--infer-method", "min-entropy",
                           "--json", "--threads", "1"])
    assert code == 0, err
    r = json.loads(out_)
    assert r["method"] == "min-entropy" and r["identification_accuracy"] >= 75  # chance: 33 %
    code, _, err = run(["train", "--tasks", "permuted:2", "--task-outputs", "5", *COMMON, "--out", str(tmp_path / "f")])
    assert code != 0 and "fewer than" in err


def test_lossy_extras_accuracy_after_training_is_the_saved_models(tmp_path: Path) -> None:
    """With float16 / int8 extras the accuracy logged right after a task's training is that of the task as saved
    (its extras cast / coded as in the file), so re-reading the file gives exactly the same numbers."""
    for dtype in ("float16", "int8"):
        out = tmp_path / dtype
        code, _, err = run(["train", "--tasks", "split:2", *COMMON, "--extras-dtype", dtype, "--out", str(out)])
        assert code == 0, err
        result = json.loads((out / "result.json").read_text())
        assert result["reloaded_equal_after_training"] is True


def test_take_stored_extras_gives_the_model_the_files_extras(tmp_path: Path) -> None:
    from pemn.training.tasks import _take_stored_extras

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    pemn.convert_(model, pemn.PEMNConfig(strategy="mask", keep=0.5))
    pemn.rename_task(model, "default", "a")
    pemn.freeze_masks(model)
    with torch.no_grad():
        model[0].bias.add_(1e-4)  # not a float16 value
    pemn.save_task(model, tmp_path / "t.pemn", extras_dtype="float16")
    assert not torch.equal(model[0].bias, model[0].bias.half().float())
    _take_stored_extras(model, tmp_path / "t.pemn", "a")
    assert torch.equal(model[0].bias, model[0].bias.half().float())
    loaded = pemn.load(tmp_path / "t.pemn", torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(),
                                                                torch.nn.Linear(5, 3)))
    assert torch.equal(loaded[0].bias, model[0].bias)
