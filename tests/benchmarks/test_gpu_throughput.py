"""benchmarks/gpu_throughput.py: refuses clearly without a GPU; its code runs (on the CPU) end to end."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_throughput.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without a GPU")
def test_without_a_gpu_it_says_so_and_exits_2():
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "no CUDA GPU on this machine" in done.stderr and "Traceback" not in done.stderr


def test_the_script_runs_end_to_end_on_the_cpu(photo_folder):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--allow-cpu", "--images", str(photo_folder), "--sizes", "16",
         "--batches", "16:4", "--warmup", "1", "--steps", "2", "--workers", "0",
         "--setups", "fp32 eager", "bf16 + channels_last", "loader alone"],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["benchmark"] == "gpu_throughput"
    assert [r["setup"] for r in result["rows"]] == ["fp32 eager", "bf16 + channels_last", "loader alone"]
    assert all(r["images_per_s"] > 0 and r["skipped_steps"] == 0 for r in result["rows"])
    assert set(result["ratios"]) == {"16/4 bf16+cl vs fp32", "16/4 loader vs fastest training"}
