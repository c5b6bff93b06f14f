"""benchmarks/kill_resume.py --quick on the tiny generated images: one kill in each phase (decode,
step, checkpoint write, sync to run.remote), a resume after each, and the run ends bitwise like
the uninterrupted baseline with no unreadable checkpoint."""

import json
import os
import subprocess
import sys
from pathlib import Path

from tiny_runs import make_images

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "kill_resume.py"


def test_quick_kill_resume_ends_bitwise_with_no_unreadable_checkpoint(tmp_path):
    images = make_images(tmp_path / "images")
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--images", str(images), "--workdir",
                           str(tmp_path / "work")], env=dict(os.environ), capture_output=True, text=True, timeout=600)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert result["benchmark"] == "kill_resume" and result["quick"]
    assert result["kills"] == result["fired"] == 4
    assert result["phases"] == {"decode": 1, "step": 1, "checkpoint": 1, "sync": 1}
    assert result["bitwise"] and result["states_bitwise"] and result["metrics_bitwise"] and result["remote_bitwise"]
    assert result["unreadable_checkpoints"] == 0
    assert "kill phase" in done.stdout  # the table
