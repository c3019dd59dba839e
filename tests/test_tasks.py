"""Named tasks on one prototype (pemn.taskset) and the multi-task file (pemn.taskfile, format version 4)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
from torch import nn

import pemn
from pemn import taskset
from pemn.artifact import encode, read
from pemn.errors import FormatError, PrototypeMismatchError

STRATEGIES = {
    "mask": dict(strategy="mask", keep=0.3),
    "one_layer": dict(strategy="one_layer", keep=0.3),
    "mp": dict(strategy="mp", keep=0.4),
    "rp": dict(strategy="rp", ratio=0.3, keep=0.3),
}


def mlp(classes: int = 5) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, classes))


def convnet(classes: int = 5) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, classes))


MODELS = {"mlp": (mlp, (6, 16)), "conv": (convnet, (6, 1, 4, 4))}


def converted(model: str = "mlp", strategy: str = "rp", **kw) -> tuple[nn.Module, torch.Tensor]:
    build, shape = MODELS[model]
    m = build(**kw)
    pemn.convert_(m, pemn.PEMNConfig(**STRATEGIES[strategy]))
    return m, torch.randn(shape, generator=torch.Generator().manual_seed(1))


def train_steps(m: nn.Module, x: torch.Tensor, steps: int = 3) -> None:
    m.train()
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5, momentum=0.9, weight_decay=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        m(x).square().mean().backward()
        opt.step()


def snapshot(m: nn.Module) -> dict[str, torch.Tensor]:
    """Every mask (current) and every dense tensor of the active task, copied."""
    out = {f"mask.{n}": mw.current_mask().clone() for n, mw in pemn.masked_weights(m).items()}
    out.update({k: v.detach().clone() for k, v in m.state_dict().items() if ".pemn_" not in f".{k}"})
    return out


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_converted_model_has_one_default_task() -> None:
    m, _ = converted()
    assert pemn.tasks(m) == ["default"] and pemn.active_task(m) == "default"
    assert not taskset.has_tasks(m)


def test_add_set_and_context_manager() -> None:
    m, _ = converted()
    pemn.add_task(m, "b")
    assert pemn.tasks(m) == ["default", "b"] and pemn.active_task(m) == "default"  # like peft: not activated
    pemn.add_task(m, "c", activate=True)
    assert pemn.active_task(m) == "c"
    with pemn.using_task(m, "b"):
        assert pemn.active_task(m) == "b"
    assert pemn.active_task(m) == "c"
    with pytest.raises(RuntimeError), pemn.using_task(m, "default"):
        raise RuntimeError("inside")
    assert pemn.active_task(m) == "c"
    pemn.rename_task(m, "b", "b2")
    assert pemn.tasks(m) == ["default", "b2", "c"]
    with pytest.raises(ValueError, match="active"):
        pemn.delete_task(m, "c")
    pemn.delete_task(m, "b2")
    assert pemn.tasks(m) == ["default", "c"]


@pytest.mark.parametrize("bad", ["", "a b", "x" * 129, "é", 3])
def test_bad_task_names_are_refused(bad: object) -> None:
    m, _ = converted()
    with pytest.raises(ValueError, match="task name"):
        pemn.add_task(m, bad)  # type: ignore[arg-type]


def test_unknown_and_duplicate_tasks() -> None:
    m, _ = converted()
    pemn.add_task(m, "b")
    with pytest.raises(ValueError, match="already has a task 'b'"):
        pemn.add_task(m, "b")
    with pytest.raises(KeyError, match="no task 'zz'"):
        pemn.set_task(m, "zz")


def test_new_tasks_start_fresh_and_differ() -> None:
    m, x = converted()
    train_steps(m, x)
    pemn.add_task(m, "b", activate=True)
    fresh = {n: mw.scores.detach().clone() for n, mw in pemn.masked_weights(m).items()}
    pemn.add_task(m, "c", activate=True)
    other = {n: mw.scores.detach().clone() for n, mw in pemn.masked_weights(m).items()}
    assert all(not torch.equal(fresh[n], other[n]) for n in fresh)  # seeded by the task's name
    bn = m[2]
    assert torch.equal(bn.running_mean, torch.zeros(12)) and torch.equal(bn.weight, torch.ones(12))


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_training_one_task_leaves_every_other_task_bit_identical(model: str, strategy: str) -> None:
    m, x = converted(model, strategy)
    pemn.add_task(m, "b")
    pemn.add_task(m, "c", num_classes=3)
    before = {}
    for t in pemn.tasks(m):
        pemn.set_task(m, t)
        train_steps(m, x)
        if t != "b":
            pemn.freeze_masks(m)  # "b" stays in training mode (scores)
        before[t] = snapshot(m)
    for t in pemn.tasks(m):  # train each once more; every other task unchanged
        pemn.set_task(m, t)
        if t == "b":
            train_steps(m, x)
            before[t] = snapshot(m)
        else:
            m.train()
            m(x).sum().backward()  # also touches the extras' grads and norm statistics; no step
            before[t] = snapshot(m)
        for u in pemn.tasks(m):
            if u != t:
                with pemn.using_task(m, u):
                    assert same(snapshot(m), before[u]), (t, u)


def test_own_head_outputs_and_parameters() -> None:
    m, x = converted()
    pemn.add_task(m, "two", num_classes=2, activate=True)
    assert m(x).shape == (6, 2)
    names = [n for n, _ in m.named_parameters()]
    assert "4.pemn_weight.scores" in names and m[4].out_features == 2
    pemn.set_task(m, "default")
    assert m(x).shape == (6, 5)
    head = m[4].masked_weights()["weight"]
    with pemn.using_task(m, "two"):
        mine = m[4].masked_weights()["weight"]
        # the first rows of the converted head's prototype slice
        assert torch.equal(mine.base(), head.base()[:2])


def test_own_head_refused_under_global_scope() -> None:
    m = mlp()
    pemn.convert_(m, pemn.PEMNConfig(strategy="rp", ratio=0.3, keep=0.3, scope="global"))
    with pytest.raises(pemn.ConversionError, match="scope='layer'"):
        pemn.add_task(m, "two", num_classes=2)


def test_switching_materialises_no_weight() -> None:
    m, _ = converted()
    pemn.add_task(m, "b")
    pemn.freeze_masks(m)
    with pemn.using_task(m, "b"):
        pemn.freeze_masks(m)
    ts = m.__dict__[taskset.TASKS_ATTR]
    stored = ts.tasks["b"].weights
    for n, mw in pemn.masked_weights(m).items():  # the inactive task: one bit per weight
        assert stored[n].bits.dtype == torch.uint8 and stored[n].bits.numel() == math.ceil(mw.numel / 8)
        assert mw.bank.view(mw.source, mw.numel).data_ptr() == mw.base().data_ptr() or mw.scale != 1.0


# ----------------------------------------------------------------------------------------------- files


def trained_tasks(model: str = "mlp", strategy: str = "rp") -> tuple[nn.Module, torch.Tensor, dict]:
    m, x = converted(model, strategy)
    pemn.add_task(m, "b", app={"permutation": 7})
    pemn.add_task(m, "c", num_classes=3)
    outs = {}
    for t in pemn.tasks(m):
        pemn.set_task(m, t)
        train_steps(m, x)
        pemn.freeze_masks(m)
        m.eval()
        with torch.no_grad():
            outs[t] = m(x)
    return m, x, outs


@pytest.mark.parametrize("coding", ["packed", "entropy", "context"])
@pytest.mark.parametrize("storage", ["values", "seed"])
@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_save_load_evaluate_every_task(tmp_path: Path, strategy: str, model: str, storage: str, coding: str
                                       ) -> None:
    """SupSup's bug (masks reloaded gave chance on every task but the last): every task, from the file."""
    m, x, outs = trained_tasks(model, strategy)
    path = pemn.save(m, tmp_path / "t.pemn", coding=coding, prototype=storage)
    assert read(path).format_version == 4
    loaded = pemn.load(path, MODELS[model][0]())
    assert pemn.tasks(loaded) == ["default", "b", "c"] and pemn.active_task(loaded) == "default"
    assert taskset.task_app(loaded, "b") == {"permutation": 7}
    for t in pemn.tasks(loaded):
        pemn.set_task(loaded, t)
        loaded.eval()
        with torch.no_grad():
            assert torch.equal(loaded(x), outs[t]), t
    one = pemn.load(path, MODELS[model][0](), task="c").eval()
    assert pemn.tasks(one) == ["c"]
    with torch.no_grad():
        assert torch.equal(one(x), outs["c"])


def test_saving_again_gives_the_same_bytes(tmp_path: Path) -> None:
    m, _, _ = trained_tasks()
    a = pemn.save(m, tmp_path / "a.pemn", coding="entropy").read_bytes()
    loaded = pemn.load(tmp_path / "a.pemn", mlp())
    assert pemn.save(loaded, tmp_path / "b.pemn", coding="entropy").read_bytes() == a


def test_load_errors(tmp_path: Path) -> None:
    m, _, _ = trained_tasks()
    path = pemn.save(m, tmp_path / "t.pemn")
    with pytest.raises(ValueError, match="no task 'zz'"):
        pemn.load(path, mlp(), task="zz")
    with pytest.raises(pemn.ArchitectureMismatchError):
        pemn.load(path, mlp(classes=4))
    with pytest.raises(pemn.ArchitectureMismatchError, match="fresh"):
        pemn.load(path, converted()[0])
    single, _ = converted()
    pemn.save(single, tmp_path / "one.pemn")
    assert pemn.tasks(pemn.load(tmp_path / "one.pemn", mlp(), task="default")) == ["default"]
    with pytest.raises(ValueError, match="one task"):
        pemn.load(tmp_path / "one.pemn", mlp(), task="b")


def _task_tensors(path: Path) -> dict[str, dict[str, bytes]]:
    art = read(path)
    return {t.name: {k.split(".", 2)[2]: v.numpy().tobytes() for k, v in t.tensors.items()} for t in art.tasks}


@pytest.mark.parametrize("start", ["single", "multi"])
def test_save_task_appends_keeping_every_other_byte(tmp_path: Path, start: str) -> None:
    m, x = converted("mlp", "mask")
    train_steps(m, x)
    pemn.freeze_masks(m)
    path = tmp_path / "t.pemn"
    if start == "single":
        pemn.save(m, path, coding="entropy")  # a format version 1 file: becomes task "default"
        old = read(path)
        before = {"default": {k: v.numpy().tobytes() for k, v in old.tensors.items() if k not in ("index",
                                                                                                   "prototype")}}
    else:
        pemn.save_task(m, path)
        before = _task_tensors(path)
    for name, classes in (("b", 2), ("c", None)):
        pemn.add_task(m, name, num_classes=classes, activate=True)
        train_steps(m, x)
        pemn.freeze_masks(m)
        size = path.stat().st_size
        pemn.save_task(m, path)
        after = _task_tensors(path)
        assert {k: after[k] for k in before} == before  # every other task's bytes, unchanged
        assert path.stat().st_size - size < sum(len(b) for b in after[name].values()) + 400
        before = after
    loaded = pemn.load(path, mlp())
    assert pemn.tasks(loaded) == ["default", "b", "c"]
    for t in pemn.tasks(loaded):
        with pemn.using_task(loaded, t), pemn.using_task(m, t), torch.no_grad():
            assert torch.equal(loaded.eval()(x), m.eval()(x))


def test_save_task_refuses_duplicates_and_foreign_prototypes(tmp_path: Path) -> None:
    m, _, _ = trained_tasks()
    path = pemn.save(m, tmp_path / "t.pemn")
    with pytest.raises(ValueError, match="already has a task 'b'"):
        pemn.save_task(m, path, task="b")
    data = path.read_bytes()
    pemn.save_task(m, path, task="b", replace=True)
    assert pemn.tasks(pemn.load(path, mlp())) == ["default", "b", "c"]
    assert path.read_bytes() == data  # the same task again: the same file
    other = mlp()
    pemn.convert_(other, pemn.PEMNConfig(strategy="rp", ratio=0.3, keep=0.3, seed=1))
    with pytest.raises(PrototypeMismatchError):
        pemn.save_task(other, path)


def test_save_task_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m, _, _ = trained_tasks()
    path = pemn.save(m, tmp_path / "t.pemn")
    data = path.read_bytes()
    pemn.add_task(m, "d")

    def broken(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError):
        pemn.save_task(m, path, task="d")
    assert path.read_bytes() == data and sorted(os.listdir(tmp_path)) == ["t.pemn"]


def _rewritten(path: Path, edit) -> bytes:
    art = read(path)
    edit(art)
    return encode(art)


@pytest.mark.parametrize("case", ["orphan tensor", "repeated name", "classes without head", "wrong shape",
                                  "missing task tensor", "bad name", "empty tasks", "base twice", "huge head"])
def test_hostile_multi_task_files_are_format_errors(tmp_path: Path, case: str) -> None:
    m, _, _ = trained_tasks()
    path = pemn.save(m, tmp_path / "t.pemn")

    def edit(art):
        if case == "orphan tensor":
            art.tensors["tasks.9.masks"] = torch.zeros(3, dtype=torch.uint8)
        elif case == "repeated name":
            art.tasks[1].name = "default"
        elif case == "classes without head":
            art.head = None
        elif case == "wrong shape":
            art.tasks[1].artifact.manifest[0]["shape"] = [12, 15]
        elif case == "missing task tensor":
            del art.tensors["tasks.1.masks"]
        elif case == "bad name":
            art.tasks[0].name = "a b"
        elif case == "empty tasks":
            art.tasks = []
            art.metadata["format_version"] = "4"
        elif case == "base twice":
            art.base.append(list(art.base[0]))
        elif case == "huge head":  # a consistent manifest of 10**7 classes: refused before any mask is decoded
            entry = art.tasks[2].artifact.manifest[-1]
            entry["shape"] = [10**7, 12]
            entry["kept"] = pemn.kept_count(0.3, 12 * 10**7)
            art.tasks[2].num_classes = 10**7

    bad = tmp_path / "bad.pemn"
    if case == "empty tasks":  # encode writes a single-task index then; make the tasks list empty by hand
        import json
        import zlib

        from pemn.artifact import INDEX_DICTIONARY, _read_index
        art = read(path)
        index = _read_index(art.tensors, 4)
        index["tasks"] = []
        d = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS, 9, zlib.Z_DEFAULT_STRATEGY, INDEX_DICTIONARY)
        bad.write_bytes(encode(art, index=d.compress(json.dumps(index).encode()) + d.flush()))
    else:
        bad.write_bytes(_rewritten(path, edit))
    fresh = mlp()
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(FormatError):
        pemn.load(bad, fresh)
    assert not taskset.has_tasks(fresh) and all(torch.equal(v, fresh.state_dict()[k]) for k, v in before.items())


def test_old_single_task_golden_files_still_load() -> None:
    here = Path(__file__).parent / "data"
    for f in sorted(here.glob("golden_v*.pemn")):
        art = read(f)
        assert art.format_version in (1, 2, 3) and not art.tasks
