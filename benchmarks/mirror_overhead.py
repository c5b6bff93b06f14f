"""What `run.remote` costs training: the same run with and without its copy on S3.

Both sides train configs/ccp-64.yaml on ../shared/data/ccp-figures through `vaelab.runs.session.train_run`
(the whole job: data, steps, evaluation, image grids, TensorBoard, checkpoints) for `--epochs`
epochs of 12 steps, with a checkpoint at each epoch end (about every 1.5 s here, where a real run
checkpoints every 2 minutes) or, with `--checkpoint-steps N`, every N steps. The mirror syncs
after every checkpoint, so this is far more syncing than a real run does. The remote side sets `run.remote: s3://bench/runs` on an S3 API served by moto in
a separate process on loopback (a real store is also another process; one in ours would share
our interpreter lock and overstate the cost). The image cache is filled before timing.

Pairs run alternately (plain, remote, remote, plain, ...) and medians are compared for two
times: training (the run's own clock, metrics.jsonl's last `time_s`: steps, evaluation, grids
and checkpoints, while the mirror syncs in its thread) and the whole call, which adds the
once-per-run costs: the probe write, claiming the folder name (about 1 s: `mirror.claim_name`),
the first sync, and the final sync that a stopping job waits for. Also reported: the bytes on
the remote, whether the remote copy equals the local run folder file for file, and the CPU
time of this process (all its threads, not the S3 server's): the client's cost per sync, and
what that comes to at a real run's cadence (a checkpoint every 2 minutes, `run.checkpoint_minutes`,
and the 60 s heartbeat sync: 90 syncs an hour at most).

    python benchmarks/mirror_overhead.py [--pairs 3] [--epochs 8] [--checkpoint-steps N]

Needs the dev extras (s3fs, moto[server]). Ends with one JSON line: {"benchmark":
"mirror_overhead", "ratio": remote/plain training time, ...}. Target: the client's CPU at a
real run's cadence under 1% of one core, and the remote copy equal to the local folder. The
wall-time ratio is shown too, but on a 2-core machine the S3 server competes with training for
the cores, which a real store does not.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from vaelab.config import load_config
from vaelab.remote import mirror
from vaelab.runs.session import train_run

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "ccp-64.yaml"
SHARED = ROOT.parent / "shared" / "data" / "ccp-figures"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_s3() -> tuple[subprocess.Popen, str]:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return server, endpoint
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise SystemExit("mirror_overhead: moto's S3 server did not start; pip install 'moto[server]'")


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of another process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_once(root: Path, overrides: list[str], remote: bool, endpoint: str, server_pid: int) -> dict:
    extra = [f"run.root={root}"]
    if remote:
        extra += ["run.remote=s3://bench/runs", f"run.remote_options={json.dumps({'endpoint_url': endpoint})}"]
    config = load_config(CONFIG, overrides + extra)
    closing, syncs = {}, []
    close, sync = mirror.RunMirror.close, mirror.RunMirror.sync

    def timed_close(self):  # the final sync, which a stopping job waits for
        start = time.perf_counter()
        try:
            return close(self)
        finally:
            closing["s"] = time.perf_counter() - start

    def counted_sync(self):
        syncs.append(1)
        return sync(self)

    mirror.RunMirror.close, mirror.RunMirror.sync = timed_close, counted_sync
    try:
        start, cpu = time.perf_counter(), time.process_time()  # process time: all our threads, not moto's
        server_cpu = cpu_seconds(server_pid)
        run_dir = train_run(config, progress=False)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        server_cpu = cpu_seconds(server_pid) - server_cpu
    finally:
        mirror.RunMirror.close, mirror.RunMirror.sync = close, sync
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"seconds": seconds, "cpu_s": cpu, "server_cpu_s": server_cpu, "train_s": records[-1]["time_s"], "final_sync_s": closing.get("s"),
            "syncs": len(syncs), "run_dir": run_dir}


def compare_remote(run_dir: Path, endpoint: str) -> tuple[bool, int]:
    fs, root = mirror.open_remote("s3://bench/runs", {"endpoint_url": endpoint})
    prefix = f"{root}/{run_dir.name}"
    remote = {p[len(prefix) + 1:]: fs.cat_file(p) for p in fs.find(prefix)}
    remote.pop(mirror.HEARTBEAT, None)
    local = {p.relative_to(run_dir).as_posix(): p.read_bytes() for p in run_dir.rglob("*")
             if p.is_file() and not any(part.startswith(".") for part in p.relative_to(run_dir).parts)}
    return remote == local, sum(len(v) for v in remote.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--checkpoint-steps", type=int, default=None, help="default: at epoch ends only")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if not SHARED.is_dir():
        print(f"mirror_overhead: {SHARED}: not found; it needs ../shared/data/ccp-figures", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    os.chdir(ROOT)  # the config's data paths are relative to the repository root
    overrides = [f"train.epochs={args.epochs}", "run.checkpoint_minutes=null", "run.tensorboard=true", "data.workers=0"]
    if args.checkpoint_steps:
        overrides.append(f"run.checkpoint_steps={args.checkpoint_steps}")
    server, endpoint = start_s3()
    try:
        fs, _ = mirror.open_remote("s3://bench", {"endpoint_url": endpoint})
        fs.mkdir("bench")
        with tempfile.TemporaryDirectory() as scratch:
            scratch = Path(scratch)
            os.environ["VAELAB_CACHE_DIR"] = str(scratch / "cache")
            run_once(scratch / "warm", overrides, False, endpoint, server.pid)  # fills the image cache, untimed
            times, train_times, cpu_times = {False: [], True: []}, {False: [], True: []}, {False: [], True: []}
            finals, server_cpus, last_remote = [], [], None
            for pair in range(args.pairs):
                for remote in ((False, True) if pair % 2 == 0 else (True, False)):
                    result = run_once(scratch / f"runs-{pair}-{int(remote)}", overrides, remote, endpoint, server.pid)
                    times[remote].append(result["seconds"])
                    train_times[remote].append(result["train_s"])
                    cpu_times[remote].append(result["cpu_s"])
                    if remote:
                        finals.append(result["final_sync_s"])
                        sync_count = result["syncs"]
                        server_cpus.append(result["server_cpu_s"])
                        last_remote = result["run_dir"]
                    print(f"  pair {pair + 1}: {'remote' if remote else 'plain '} {result['train_s']:.2f} s training, "
                          f"{result['seconds']:.2f} s in all", file=sys.stderr)
            same, remote_bytes = compare_remote(last_remote, endpoint)
    finally:
        server.kill()

    plain, remote = statistics.median(train_times[False]), statistics.median(train_times[True])
    ratio = remote / plain
    whole = statistics.median(times[True]) - statistics.median(times[False])
    steps = args.epochs * load_config(CONFIG).train.batches_per_epoch
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{args.threads} thread(s); configs/ccp-64.yaml, {args.epochs} epochs ({steps} steps), a checkpoint "
          f"{f'every {args.checkpoint_steps} steps' if args.checkpoint_steps else 'at each epoch end'}; "
          f"S3: moto on loopback\n")
    print(f"{'run':<22} {'training s (median)':>20} {'in all s (median)':>18}  training s of each run")
    for name, key in (("plain (baseline)", False), ("run.remote: s3://", True)):
        print(f"{name:<22} {statistics.median(train_times[key]):>20.2f} {statistics.median(times[key]):>18.2f}  "
              + " ".join(f"{t:.2f}" for t in train_times[key]))
    cpu_extra = statistics.median(cpu_times[True]) - statistics.median(cpu_times[False])
    print(f"\nratio remote/plain, training wall time: {ratio:.3f} (the S3 server shares this machine's cores)")
    print(f"CPU of this process (all threads): plain {statistics.median(cpu_times[False]):.2f} s, remote "
          f"{statistics.median(cpu_times[True]):.2f} s: {cpu_extra:.2f} s more for {sync_count} syncs, "
          f"{1000 * cpu_extra / sync_count:.0f} ms per sync; at 90 syncs an hour (a real run's cadence): "
          f"{100 * 90 * cpu_extra / sync_count / 3600:.2f}% of one core (target < 1%)")
    print(f"CPU of the S3 server (moto, same cores; a real store's is elsewhere): median "
          f"{statistics.median(server_cpus):.2f} s per run")
    print(f"once per run (probe, name claim, first and final sync): {whole:.2f} s; "
          f"of it the final sync a stopping job waits for: median {statistics.median(finals):.3f} s")
    print(f"remote copy: {remote_bytes / 2**20:.1f} MiB, equal to the local folder file for file: {same}")
    print(json.dumps({"benchmark": "mirror_overhead", "ratio": round(ratio, 4), "plain_train_s": train_times[False],
                      "remote_train_s": train_times[True], "plain_s": times[False], "remote_s": times[True],
                      "once_per_run_s": round(whole, 3),
                      "cpu_per_sync_s": round(cpu_extra / sync_count, 4),
                      "core_share_at_90_syncs_per_hour": round(90 * cpu_extra / sync_count / 3600, 5), "final_sync_s": finals, "plain_cpu_s": cpu_times[False],
                      "remote_cpu_s": cpu_times[True], "server_cpu_s": server_cpus, "syncs": sync_count, "remote_mib": round(remote_bytes / 2**20, 2),
                      "remote_equals_local": same, "epochs": args.epochs, "steps": steps,
                      "checkpoint_steps": args.checkpoint_steps, "threads": args.threads}))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
