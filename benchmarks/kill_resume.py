"""SIGKILL a CPU training run at seeded random moments, resume it each time, and check that it ends
bitwise like the same run left alone.

The baseline is an uninterrupted run of the same config, trained first in the same invocation.
Every run (the baseline and each piece of the killed one) is a child process with one torch
thread; the child patches vaelab in memory to kill itself (SIGKILL, so nothing gets to clean up)
at its moment, so the library carries no test hooks. The moments come from four phases:

- decode:     the first epoch fills the image cache from the JPEGs (data.workers 0, so in the
              training process): killed on entering `ImageCache.fill` (images of the batch half
              stored) or just after it stored an image.
- step:       in `Trainer.train_step`: before it, or after the optimizer changed the weights
              but before the trainer counted the step.
- checkpoint: in a checkpoint's atomic write (last.pt, or a link for last-epoch/best/numbered):
              torn (the temporary file cut to half its bytes, as a kill mid-write leaves it),
              written (complete, not yet renamed), or renamed (before the next link).
- sync:       in the copy to run.remote (a file:// folder here), in the background thread:
              on starting a file, or with the file written beside its name, not yet renamed.

A moment is (phase, moment, step): the child dies at the first event of that phase once the
run has done `step` steps. The baseline run records the steps at which each phase's events
happen, and the moments are drawn from those (`--seed`), an equal share per phase, and
killed in the order of the run. The table's `from` is the step each piece started at (the
last.pt it resumed; `start` when there was none yet). After each kill, every checkpoint file of
the run folder and of its remote copy is loaded with `torch.load(weights_only=True)`; the count
of unreadable ones is reported. At the end the killed run must match the baseline: metrics.jsonl without
the timings, every checkpoint's whole training state (weights, optimizer, EMA, RNG, guard,
progress without its clock), and the remote copy's last.pt.

    python benchmarks/kill_resume.py [--kills 20] [--seed 0] [--images DIR] [--quick]

--images: a folder with metadata.json (default ../shared/data/ccp-figures) or a folder to
index. --quick: 4 kills of a 2-epoch run at 16 px, for the test suite. Exits 1 unless the
killed run is bitwise the baseline with no unreadable checkpoint. Ends with one JSON line:
{"benchmark": "kill_resume", "kills": ..., "bitwise": ..., "unreadable_checkpoints": ..., ...}.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "ccp-figures"
PHASES = ("decode", "step", "checkpoint", "sync")
MOMENTS = {"decode": ("enter", "stored"), "step": ("before", "after"),
           "checkpoint": ("torn", "written", "renamed"), "sync": ("start", "written")}
MODEL = "{conv: [{filters: 8, kernel: 3, stride: 2}, {filters: 16, kernel: 3, stride: 2}], dense: 32, latent: 8}"


# --------------------------------------------------------------------------------------------
# the child: one piece of a run, killed at its moment
# --------------------------------------------------------------------------------------------


def child(config_path: Path, resume: str, target: dict | None, fired: Path, census: Path | None) -> None:
    """Train (a new run or a resume), dying at `target` = {phase, moment, step}; with `census`,
    append every event's (phase, step) there instead."""
    import torch

    torch.set_num_threads(1)  # the same arithmetic in every piece and in the baseline
    from vaelab.config import load_config
    from vaelab.data import cache
    from vaelab.remote import mirror
    from vaelab.runs import checkpoints
    from vaelab.runs.session import train_run
    from vaelab.train import trainer

    live: list = []  # the Trainer, for the step count the events are placed by
    log = open(census, "a") if census else None
    kind = ["save"]  # what the checkpoint write in progress is: a save or a link

    def hit(phase: str):
        step = live[0].step if live else 0
        if log is not None:
            log.write(f"{phase} {step}\n")
        if target and target["phase"] == phase and step >= target["step"]:
            return target["moment"]
        return None

    def die(moment: str, **extra) -> None:
        step = live[0].step if live else 0
        fired.write_text(json.dumps({**(target or {}), "moment": moment, "at_step": step, **extra}))
        os.kill(os.getpid(), signal.SIGKILL)

    real_init = trainer.Trainer.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        live[:] = [self]

    def dying(real, phase: str, before: str, after: str):
        """`real` (a method), killed before it runs or after it returned when `phase` is the target's."""
        def method(self, *args):
            moment = hit(phase)
            if moment == before:
                die(moment)
            result = real(self, *args)
            if moment == after:
                die(moment)
            return result
        return method

    train_step = dying(trainer.Trainer.train_step, "step", "before", "after")
    fill = dying(cache.ImageCache.fill, "decode", "enter", "stored")

    real_atomic, real_save, real_link = checkpoints.atomic_path, checkpoints.save_state, checkpoints.link_state

    @contextmanager
    def atomic_path(path, durable=False):
        moment = hit("checkpoint")
        if moment == "torn" and kind[0] == "link":
            moment = "written"  # a link has no bytes to tear
        with real_atomic(path, durable) as temporary:
            yield temporary
            if moment == "torn":
                os.truncate(temporary, os.path.getsize(temporary) // 2)
            if moment in ("torn", "written"):
                die(moment, file=Path(path).name)
        if moment == "renamed":
            die(moment, file=Path(path).name)

    def save_state(*args, **kwargs):
        kind[0] = "save"
        return real_save(*args, **kwargs)

    def link_state(*args, **kwargs):
        kind[0] = "link"
        try:
            return real_link(*args, **kwargs)
        finally:
            kind[0] = "save"

    real_write = mirror.RunMirror._write

    def write(self, send, relative):
        moment = hit("sync")
        if moment == "start":
            die(moment, file=relative)
        if moment == "written":  # the file beside its name (vaelab writes NAME.partial, then renames)
            send(f"{self.remote}/{relative}.partial")
            die(moment, file=relative)
        return real_write(self, send, relative)

    trainer.Trainer.__init__, trainer.Trainer.train_step = init, train_step
    cache.ImageCache.fill = fill
    checkpoints.atomic_path, checkpoints.save_state, checkpoints.link_state = atomic_path, save_state, link_state
    mirror.RunMirror._write = write
    config = load_config(config_path)
    if resume == "new":
        train_run(config, progress=False)
    else:
        train_run(None, resume=Path(resume), progress=False)
    if log is not None:
        log.close()


# --------------------------------------------------------------------------------------------
# the driver
# --------------------------------------------------------------------------------------------


def write_config(folder: Path, images: Path, quick: bool) -> Path:
    from vaelab.config import load_config

    metadata = images / "metadata.json"
    overrides = [f"data.images={images}", f"data.cache_dir={folder / 'cache'}", "data.workers=0",
                 f"data.size={[16, 16] if quick else [32, 32]}", "data.val_fraction=0.1", "data.fit=pad",
                 f"model={MODEL}", f"train.epochs={2 if quick else 3}", f"train.batch_size={4 if quick else 16}",
                 "train.lr=0.002", "train.seed=0", "train.device=cpu",
                 f"run.root={folder / 'runs'}", f"run.remote=file://{folder / 'remote'}",
                 f"run.checkpoint_steps={3 if quick else 7}", "run.checkpoint_minutes=null", "run.checkpoint_every=1",
                 "run.keep_checkpoints=2", "run.tensorboard=false", "run.images=4"]
    if metadata.is_file():  # ccp-figures: its field names, and the person box
        base = Path(__file__).resolve().parents[1] / "configs" / "ccp-figures.yaml"
        config = load_config(base, [f"data.metadata={metadata}", *overrides])
    else:
        config = load_config(None, overrides)
    path = folder / "config.yaml"
    path.write_text(config.to_yaml())
    return path


def run_piece(script: Path, config: Path, resume: str, target: dict | None, work: Path,
              census: Path | None = None) -> tuple[subprocess.CompletedProcess, dict | None, float]:
    fired = work / "fired.json"
    fired.unlink(missing_ok=True)
    command = [sys.executable, str(script), "--child", str(config), resume, json.dumps(target), str(fired)]
    if census is not None:
        command.append(str(census))
    env = dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="1")
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    took = time.perf_counter() - start
    return done, json.loads(fired.read_text()) if fired.is_file() else None, took


def only_run(root: Path) -> Path:
    (run_dir,) = [p for p in root.iterdir() if p.is_dir()]
    return run_dir


def checkpoint_files(run_dir: Path, remote_dir: Path) -> list[Path]:
    """Every checkpoint a reader could pick: *.pt in both copies (not the hidden temporaries, nor
    the remote's NAME.partial files, which no reader opens)."""
    return sorted([*(run_dir / "checkpoints").glob("*.pt"), *(remote_dir / "checkpoints").glob("*.pt")])


def unreadable(paths: list[Path]) -> list[str]:
    from vaelab.errors import VaelabError
    from vaelab.runs.checkpoints import load_state

    bad = []
    for path in paths:
        try:
            load_state(path)
        except VaelabError:
            bad.append(str(path))
    return bad


def same(a, b) -> bool:
    """Bitwise equality of two nested training states."""
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype \
            and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def untimed_state(path: Path) -> dict:
    from vaelab.runs.checkpoints import load_state

    state = load_state(path)
    state["progress"] = {k: v for k, v in state["progress"].items() if k != "time_s"}
    return state


def untimed_metrics(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in ("time_s", "rss_mb")} for line in lines]


def draw_moments(census: Path, kills: int, seed: int) -> list[dict]:
    """`kills` moments, an equal share per phase (the remainder to random phases), at steps where
    the baseline had that phase's events, in the order of the run."""
    rng = random.Random(seed)
    steps: dict[str, list[int]] = {phase: [] for phase in PHASES}
    for line in census.read_text().splitlines():
        phase, step = line.split()
        steps[phase].append(int(step))
    # The copy runs in a background thread, so the steps its writes fell at vary from run to run;
    # a sync is asked for after every checkpoint, so its moments are drawn at the checkpoints'
    # steps, which do not vary, and the same seed draws the same moments.
    steps["sync"] = steps["checkpoint"]
    phases = [PHASES[i % len(PHASES)] for i in range(kills - kills % len(PHASES))]
    phases += rng.sample(PHASES, kills % len(PHASES))
    moments = []
    for phase in PHASES:
        count = phases.count(phase)
        choices = sorted(set(steps[phase]))
        picked = rng.sample(choices, count) if len(choices) >= count else [rng.choice(choices) for _ in range(count)]
        moments += [{"phase": phase, "moment": rng.choice(MOMENTS[phase]), "step": step} for step in picked]
    return sorted(moments, key=lambda m: (m["step"], PHASES.index(m["phase"])))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=None, help="moments to kill at (default 20, --quick 4)")
    parser.add_argument("--seed", type=int, default=0, help="draws the moments")
    parser.add_argument("--images", type=Path, default=SHARED, help="a folder with metadata.json, or one to index")
    parser.add_argument("--quick", action="store_true", help="2 epochs at 16 px, 4 kills: for the test suite")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        config, resume, target, fired, *census = args.child
        child(Path(config), resume, json.loads(target), Path(fired), Path(census[0]) if census else None)
        return 0

    import torch

    kills = args.kills if args.kills is not None else (4 if args.quick else 20)
    if not args.images.is_dir():
        print(f"no image folder at {args.images}: pass --images (a folder of JPEGs, or one with metadata.json)")
        return 2
    work = Path(tempfile.mkdtemp(prefix="kill-resume-")) if args.workdir is None else args.workdir
    work.mkdir(parents=True, exist_ok=True)
    script = Path(__file__).resolve()
    started = time.perf_counter()

    # The baseline: uninterrupted, recording where each phase's events fall.
    base = work / "baseline"
    base.mkdir(exist_ok=True)
    census = base / "events.txt"
    census.unlink(missing_ok=True)
    config = write_config(base, args.images.resolve(), args.quick)
    done, _, baseline_s = run_piece(script, config, "new", None, base, census)
    if done.returncode != 0:
        print(done.stderr[-4000:])
        return 2
    base_dir = only_run(base / "runs")
    moments = draw_moments(census, kills, args.seed)

    # The killed run: a piece per moment, each resuming the last, and a last piece to the end.
    killed = work / "killed"
    killed.mkdir(exist_ok=True)
    config = write_config(killed, args.images.resolve(), args.quick)
    rows, bad_total, resume = [], [], "new"
    for number, target in enumerate([*moments, None], 1):
        done, fired, took = run_piece(script, config, resume, target, killed)
        if done.returncode not in (0, -signal.SIGKILL):
            print(done.stderr[-4000:])
            return 2
        run_dir = only_run(killed / "runs")
        if target is None:
            rows.append({"n": "end", "phase": "-", "moment": "-", "file": "", "step": "-", "at": "-",
                         "exit": done.returncode,
                         "resumed": resumed_step(run_dir, done.stderr), "bad": 0, "s": took})
            break
        bad = unreadable(checkpoint_files(run_dir, killed / "remote" / run_dir.name))
        bad_total += bad
        rows.append({"n": number, "phase": target["phase"], "moment": fired["moment"] if fired else target["moment"],
                     "file": (fired or {}).get("file", ""),
                     "step": target["step"], "at": fired["at_step"] if fired else "missed",
                     "exit": done.returncode,
                     "resumed": resumed_step(run_dir, done.stderr) if resume != "new" else "new",
                     "bad": len(bad), "s": took})
        resume = str(run_dir)
    total_s = time.perf_counter() - started

    # The verdict against the baseline.
    run_dir = only_run(killed / "runs")
    fired_count = sum(1 for r in rows if r["exit"] == -signal.SIGKILL)
    metrics_same = untimed_metrics(run_dir) == untimed_metrics(base_dir)
    names = sorted(p.name for p in (base_dir / "checkpoints").glob("*.pt"))
    ours = sorted(p.name for p in (run_dir / "checkpoints").glob("*.pt"))
    states_same = ours == names and all(
        same(untimed_state(run_dir / "checkpoints" / n), untimed_state(base_dir / "checkpoints" / n)) for n in names)
    remote_last = killed / "remote" / run_dir.name / "checkpoints" / "last.pt"
    remote_same = remote_last.is_file() and same(untimed_state(remote_last),
                                                 untimed_state(base_dir / "checkpoints" / "last.pt"))
    bad_total += unreadable(checkpoint_files(run_dir, killed / "remote" / run_dir.name))
    status = json.loads((run_dir / "run.json").read_text())["status"]
    bitwise = metrics_same and states_same and remote_same and status == "finished"

    print(f"kill_resume: {kills} moments (seed {args.seed}), {len(untimed_metrics(base_dir))} epochs of "
          f"{untimed_metrics(base_dir)[-1]['step']} steps at {'16' if args.quick else '32'} px on {args.images}")
    print(f"torch {torch.__version__}, 1 thread per run, {platform.machine()} {os.cpu_count()} cpus, "
          f"load average {os.getloadavg()[0]:.1f}")
    print()
    print(f"{'kill':>4} {'phase':<10} {'moment':<8} {'file':<22} {'step>=':>6} {'died at':>7} {'exit':>4} "
          f"{'from':>7} {'unreadable':>10} {'s':>5}")
    for r in rows:
        print(f"{r['n']:>4} {r['phase']:<10} {r['moment']:<8} {r['file']:<22} {r['step']:>6} {r['at']:>7} "
              f"{r['exit']:>4} {r['resumed']:>7} {r['bad']:>10} {r['s']:>5.1f}")
    print()
    print(f"{'run':<26} {'pieces':>6} {'seconds':>8}")
    print(f"{'baseline (uninterrupted)':<26} {1:>6} {baseline_s:>8.1f}")
    print(f"{'killed and resumed':<26} {len(rows):>6} {sum(r['s'] for r in rows):>8.1f}")
    print()
    print(f"kills fired: {fired_count}/{kills}; metrics.jsonl bitwise: {metrics_same}; every checkpoint's state "
          f"bitwise ({len(names)} files): {states_same}; remote last.pt bitwise: {remote_same}; status: {status}")
    print(f"unreadable checkpoints: {len(bad_total)}{' ' + ', '.join(bad_total) if bad_total else ''}")
    print(json.dumps({"benchmark": "kill_resume", "kills": kills, "fired": fired_count, "seed": args.seed,
                      "bitwise": bitwise, "metrics_bitwise": metrics_same, "states_bitwise": states_same,
                      "remote_bitwise": remote_same, "unreadable_checkpoints": len(bad_total),
                      "phases": {p: sum(1 for m in moments if m["phase"] == p) for p in PHASES},
                      "baseline_s": round(baseline_s, 1), "wall_s": round(total_s, 1), "quick": args.quick,
                      "torch": torch.__version__}))
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if bitwise and not bad_total and fired_count == kills else 1


def resumed_step(run_dir: Path, stderr: str) -> int | str:
    """The step a piece resumed at, from its 'resumed at epoch E, batch B (step S)' line."""
    for line in stderr.splitlines():
        if line.startswith("resumed at epoch"):
            return int(line.rsplit("(step ", 1)[1].rstrip(")"))
    return "start"  # no last.pt yet (the kill came before the first one was in place): it began again


if __name__ == "__main__":
    sys.exit(main())
