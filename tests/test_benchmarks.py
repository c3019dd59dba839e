"""Smoke test of the benchmark scripts (tiny sizes): each runs and reports the figures its issue names.
The real figures come from `python benchmarks/run_all.py` (BENCHMARKS.md), never from timed tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def test_run_all_quick() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--quick"],
                         capture_output=True, text=True, timeout=300, check=True)
    doc = json.loads(out.stdout)
    r = doc["results"]
    for row in r["bench_train_step"]["results"]:
        assert row["ratio_pemn_over_dense"] > 0 and row["ratio_pemn_over_reference"] > 0
    for row in r["bench_inference"]["results"]:
        assert row["ratio_frozen_over_dense"] > 0 and row["ratio_materialized_over_dense"] > 0
    assert r["bench_memory"]["tensors"]["distinct_weight_storages"] == 1
    assert r["bench_memory"]["ratio_peak_rss_rp_over_dense"] > 0
    for row in r["bench_size"]["results"]:
        assert row["file_bytes"] == row["payload_bytes"] + row["bytes"]["header"]
    assert r["bench_load"]["ratio_load_pemn_over_torch"] > 0
    assert {row["coding"] for row in r["bench_scaling"]["results"]} == {"packed", "entropy"}
    assert r["bench_coding"]["results"]
    for row in r["bench_quantize"]["train_step"]:
        assert set(row["ratio_over_dense"]) == {"binary", "ternary", "int4", "int8"}
        assert all(v > 0 for v in row["ratio_over_dense"].values())
    for row in r["bench_quantize"]["load"]:
        assert row["binary_bytes"] < row["int4_bytes"] < row["dense_bytes"] and row["ratio_load_over_dense"]["int4"] > 0


def _bench(name: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), "--quick", *args],
                         capture_output=True, text=True, timeout=300, check=True, cwd=ROOT / "benchmarks")
    return json.loads(out.stdout)


@pytest.mark.slow  # fresh processes
def test_bench_eval_batch_and_threads_quick() -> None:
    """The two benchmarks behind issue 15's defaults run and report the ratios BENCHMARKS.md quotes."""
    from pemn.training.evaluation import DEFAULT_EVAL_BATCH

    doc = _bench("bench_eval_batch")
    assert doc["default_eval_batch"] == DEFAULT_EVAL_BATCH
    row = doc["models"][0]
    assert f"batch_{DEFAULT_EVAL_BATCH}" in row["results"] and row["ratio_default_over_fastest"] >= 1.0
    doc = _bench("bench_threads")
    for load in doc["results"].values():
        assert load["ratio_2_over_1"] > 0 and len(load["threads_1_s"]) == doc["repeats"]


@pytest.mark.slow  # fresh processes
def test_bench_tasks_quick() -> None:
    """Issue 22's bars: one more task costs at most its mask bound + extras + 300 B and at least 2x less than SupSup's
    CSC storage of the same masks; memory per task is far below a dense copy; switching works."""
    doc = _bench("bench_tasks")
    for row in doc["bytes"]:
        assert row["meets_300_bytes"] and row["ratio_csc_over_pemn_masks"] >= 2
        assert row["mask_bytes"] >= row["entropy_bound_bytes"]
    assert doc["memory"]["ratio_dense_copy_over_rss_per_task"] > 1
    assert doc["switch"]["ratio_set_task_over_dense_swap"] > 0


@pytest.mark.slow  # a fresh process
def test_bench_index_dictionary_quick() -> None:
    """Issue 19: the core's index dictionary (no application strings) keeps the slim files, the golden version 3 files
    and a multi-task file within a few bytes of the first dictionary, and both dictionaries load."""
    doc = _bench("bench_index_dictionary")
    assert doc["dictionary_bytes"]["core"] < doc["dictionary_bytes"]["first"]
    for row in doc["results"]:
        sizes = row["sizes"]
        assert sizes["core"]["index_bytes"] < sizes["none"]["index_bytes"]
        if "app" not in row["file"]:  # files without the training application's app object
            assert row["core_minus_first_file_bytes"] <= 4, row


@pytest.mark.slow  # a fresh process
def test_bench_lm_step_quick() -> None:
    """Issue 21 item 15: the language-model step benchmark reports masked / dense by wall clock and by the
    thread's CPU time (both timed in one process, interleaved), against the 1.15 bar."""
    doc = _bench("bench_lm_step")
    row = doc["results"][0]
    assert row["bar"] == 1.15 and row["masked_layers"] and row["masked_weights"] > 0
    for key in ("ratio_mask_over_dense", "ratio_rp_over_dense", "ratio_mask_over_dense_cpu", "ratio_rp_over_dense_cpu"):
        assert row[key] > 0
    assert all(t["median_thread_s"] > 0 for t in row["timings"].values())
    assert "pemn_mask_no_selection" not in row["timings"]


@pytest.mark.slow  # a fresh process
def test_bench_lm_step_selection_bound() -> None:
    """``--selection-bound`` times the mask model without its selection beside the other variants, in the same
    process, and reports its ratios to dense."""
    doc = _bench("bench_lm_step", "--selection-bound")
    row = doc["results"][0]
    assert set(row["timings"]) == {"dense", "pemn_mask", "pemn_rp", "pemn_mask_no_selection"}
    assert row["ratio_mask_no_selection_over_dense"] > 0 and row["ratio_mask_no_selection_over_dense_cpu"] > 0


@pytest.mark.slow  # trains ten tiny models
def test_bench_split_tasks_quick() -> None:
    """Split tasks on one prototype against separately trained models: both variants run, the shared file is
    smaller than the separate ones and re-reads exactly."""
    doc = _bench("bench_split_tasks")
    assert len(doc["results"]) == 5 and doc["shared_reloaded_equal_after_training"] is True
    assert doc["ratio_separate_bytes_over_shared"] > 1
    assert all(0 <= r["separate"] <= 100 and 0 <= r["shared_from_file"] <= 100 for r in doc["results"])
    assert doc["separate_init"] == "fresh" and doc["mean_difference"] == pytest.approx(
        sum(r["difference"] for r in doc["results"]) / 5)


@pytest.mark.slow  # trains ten tiny models
def test_bench_split_tasks_matched_init_gives_identical_tasks() -> None:
    """The control: separate models given the shared tasks' initial state (same scores, biases, head) train to
    exactly the shared tasks' accuracies (from their files, float16 extras), so sharing the prototype costs
    nothing and the fresh-init differences are initialisation noise."""
    doc = _bench("bench_split_tasks", "--separate-init", "matched", "--set", "extras_dtype=float16")
    assert doc["separate_init"] == "matched"
    assert [r["difference"] for r in doc["results"]] == [0.0] * 5
    assert doc["std_difference"] == 0.0


@pytest.mark.slow  # a fresh process
def test_bench_context_coding_quick() -> None:
    """Issue 23's coder: the benchmark re-codes each file both ways and reports the ratio BENCHMARKS.md quotes."""
    structured, plain = _bench("bench_context_coding")["results"]
    assert structured["ratio_context_over_entropy_masks"] < 0.9 and "rows-cols" in structured["masks_by_model"]
    assert plain["ratio_context_over_entropy_masks"] == 1.0 and set(plain["masks_by_model"]) == {"order0"}
    for row in (structured, plain):
        assert row["mask_bits_per_weight"]["entropy"] >= row["mask_bits_per_weight"]["order0_bound"]
        assert row["ratio_decode_context_over_entropy"] > 0
