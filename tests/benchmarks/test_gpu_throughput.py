"""benchmarks/gpu_throughput.py: refuses clearly without a GPU; its code runs (on the CPU) end to end;
the one-shot safety nets (work order, time budget, rows written as measured, failures recorded, the
watchdog) do what they say."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_throughput.py"
TINY = ["--allow-cpu", "--sizes", "16", "--warmup", "1", "--steps", "2", "--workers", "0"]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("gpu_throughput_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without a GPU")
def test_without_a_gpu_it_says_so_and_exits_2():
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "no CUDA GPU on this machine" in done.stderr and "Traceback" not in done.stderr


def test_the_script_runs_end_to_end_on_the_cpu(photo_folder, tmp_path):
    # 16:4,64 - batch 64 is more than the 12 photos: its loader fails, its rows say so, the run goes on
    rows_out = tmp_path / "out" / "rows.jsonl"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *TINY, "--images", str(photo_folder), "--batches", "16:4,64",
         "--setups", "fp32 eager", "bf16 + channels_last", "loader alone", "--rows-out", str(rows_out),
         "--budget-s", "1e6"],  # no setup is skipped for time: the assertions are about the script, not the clock
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = last_json(done.stdout)
    assert result["benchmark"] == "gpu_throughput" and result["complete"] is True and result["stopped"] is None
    rows = result["rows"]
    assert [(r["batch"], r["setup"]) for r in rows] == [
        (4, "fp32 eager"), (4, "bf16 + channels_last"), (4, "loader alone"),
        (64, "fp32 eager"), (64, "bf16 + channels_last"), (64, "loader alone")]
    assert all(r["status"] == "measured" and r["images_per_s"] > 0 and r["skipped_steps"] == 0 for r in rows[:3])
    assert all(r["status"] == "failed" and r["images_per_s"] is None for r in rows[3:])
    assert [r["error"] for r in rows[3:]] == ["loader: ValueError: fewer than 64 images in " + str(photo_folder)] * 3
    assert set(result["ratios"]) == {"16/4 bf16+cl vs fp32", "16/4 loader vs fastest training"}
    assert "rows: 3 measured, 3 failed, 0 skipped" in done.stdout
    # every row was written to --rows-out as it was measured, in the order of the work
    written = read_rows(rows_out)
    assert [(r["batch"], r["setup"], r["status"]) for r in written] == [(r["batch"], r["setup"], r["status"]) for r in rows]
    assert written[0]["images_per_s"] == rows[0]["images_per_s"]


def test_the_most_important_numbers_come_first_and_compile_runs_once_per_size(bench):
    plan = bench.plan_work([640, 256], bench.DEFAULT_BATCHES, list(bench.SETUPS), compile_all=False)
    assert plan[:4] == [(640, 16, "fp32 eager"), (640, 16, "bf16 + channels_last"), (640, 16, "loader alone"),
                        (640, 16, "bf16")]
    assert [key for key in plan if key[2] == "bf16 + cl + compile"] == [(640, 16, "bf16 + cl + compile"),
                                                                       (256, 64, "bf16 + cl + compile")]
    assert plan.index((640, 16, "bf16 + cl + compile")) > plan.index((640, 32, "loader alone"))
    assert all(size == 640 for size, _, _ in plan[:plan.index((640, 16, "bf16 + cl + compile")) + 1])
    assert len(plan) == 2 * (3 * 4 + 1) and len(set(plan)) == len(plan)
    every = bench.plan_work([640, 256], bench.DEFAULT_BATCHES, list(bench.SETUPS), compile_all=True)
    assert sorted(every) == sorted((s, b, n) for s, bs in bench.DEFAULT_BATCHES.items() for b in bs for n in bench.SETUPS)


def test_a_spent_budget_skips_setups_but_still_reports(bench, photo_folder, tmp_path, capsys, monkeypatch):
    # A compiled setup is expected to take "forever": it alone is skipped; the others are measured.
    monkeypatch.setattr(bench, "FIRST_GUESS_S", {True: 1e9, False: 0.0})
    rows_out = tmp_path / "rows.jsonl"
    code = bench.main([*TINY, "--images", str(photo_folder), "--batches", "16:4", "--budget-s", "600",
                       "--setups", "fp32 eager", "bf16 + cl + compile", "loader alone", "--rows-out", str(rows_out)])
    out = capsys.readouterr().out
    assert code == 0
    result = last_json(out)
    assert result["complete"] is False and result["budget_s"] == 600
    status = {r["setup"]: r["status"] for r in result["rows"]}
    assert status == {"fp32 eager": "measured", "bf16 + cl + compile": "skipped", "loader alone": "measured"}
    skipped = next(r for r in result["rows"] if r["status"] == "skipped")
    assert skipped["error"].startswith("time budget:") and skipped["images_per_s"] is None
    assert "(skipped: time budget:" in out and "rows: 2 measured, 0 failed, 1 skipped" in out
    assert [r["setup"] for r in read_rows(rows_out)] == ["fp32 eager", "loader alone", "bf16 + cl + compile"]

    # no budget at all: nothing runs, and the table and the JSON line still come
    code = bench.main([*TINY, "--images", str(photo_folder), "--batches", "16:4", "--budget-s", "0",
                       "--rows-out", str(rows_out)])
    result = last_json(capsys.readouterr().out)
    assert code == 0 and len(result["rows"]) == 5 and {r["status"] for r in result["rows"]} == {"skipped"}
    assert len(read_rows(rows_out)) == 5  # the file starts afresh with each run


def test_a_failing_setup_is_recorded_in_one_line_and_the_run_goes_on(bench, photo_folder, tmp_path, capsys,
                                                                      monkeypatch):
    real = bench.measure

    def flaky(config, loader, setup, warmup, steps):
        if setup == bench.SETUPS["bf16"]:
            raise RuntimeError("Triton compile failed\n  a long traceback\n  more of it")
        if setup == bench.SETUPS["bf16 + channels_last"]:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(config, loader, setup, warmup, steps)

    monkeypatch.setattr(bench, "measure", flaky)
    rows_out = tmp_path / "rows.jsonl"
    code = bench.main([*TINY, "--images", str(photo_folder), "--batches", "16:4", "--rows-out", str(rows_out),
                       "--setups", "fp32 eager", "bf16", "bf16 + channels_last", "loader alone"])
    out = capsys.readouterr().out
    assert code == 0
    rows = {r["setup"]: r for r in last_json(out)["rows"]}
    assert rows["bf16"]["status"] == "failed" and rows["bf16"]["error"] == "RuntimeError: Triton compile failed"
    assert rows["bf16 + channels_last"]["error"] == "out of GPU memory"
    assert rows["fp32 eager"]["status"] == rows["loader alone"]["status"] == "measured"
    assert "(failed: RuntimeError: Triton compile failed)" in out
    assert {r["setup"]: r["status"] for r in read_rows(rows_out)} == {k: v["status"] for k, v in rows.items()}


def test_the_watchdog_reports_what_it_has_and_exits_3(photo_folder, tmp_path):
    rows_out = tmp_path / "rows.jsonl"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *TINY, "--images", str(photo_folder), "--batches", "16:4",
         "--hard-limit-s", "0", "--rows-out", str(rows_out)],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 3, done.stderr[-2000:]
    result = last_json(done.stdout)
    assert result["stopped"] == "hard limit of 0 s reached" and result["complete"] is False
    assert len(result["rows"]) == 5  # every planned setup has its row, measured or not
    assert all(r["status"] != "measured" or r["images_per_s"] > 0 for r in result["rows"])
    assert "stopped: hard limit of 0 s reached" in done.stdout
