"""A run folder's copy on object storage (`run.remote`): S3, GCS, Azure or any fsspec URL.

Training writes the run folder on local disk as always; `RunMirror` copies it to
`<run.remote>/<run folder name>/` in a background thread, so the step never waits on the
network. It syncs after every checkpoint and at least once a minute, uploading only files
that changed since their last upload and deleting remote files that the run deleted
(checkpoints past `run.keep_checkpoints`), and once more, waiting, when training ends.

A pod without persistent disk can therefore be preempted and restarted: `--resume auto`
finds the unfinished run on the remote (`remote_runs`, `vaelab.runs.folder.find_resumable`),
downloads it (`vaelab.remote.fetch.download_run`) and continues it. Order matters for that: a sync uploads the records (metrics, log, grids)
before the checkpoints and `run.json` last, so a remote copy cut short by a kill never holds
a checkpoint newer than its metrics (the resume trims metrics past the checkpoint).

Dot files are local only: the run's lock, temporaries of atomic writes, and `.mirror.json`,
the sizes and modification times last uploaded, which spares a resumed run re-uploading
what the remote already has. `mirror.json` on the remote is a heartbeat: the host, process
and time of the last sync, so another machine's `--resume auto` leaves a run alone that is
still being trained elsewhere (`trained_elsewhere`), and new run names are claimed there
(`claim_name`).
"""

from __future__ import annotations

import copy
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Optional

from vaelab.errors import TryLater, VaelabError
from vaelab.files import read_json, write_json

HEARTBEAT = "mirror.json"
MANIFEST = ".mirror.json"
SYNC_EVERY_S = 60.0
# A running run whose heartbeat is older than this lost its machine (SIGKILL, node gone).
ALIVE_WITHIN_S = 3 * SYNC_EVERY_S
CLAIM_SETTLE_S = 1.0  # see claim_name


def open_remote(url: str, options: Optional[dict] = None):
    """(fsspec file system, path inside it) for `url`, or a one-line error naming run.remote."""
    if "://" not in url:
        raise VaelabError(f"run.remote: {url!r} is not a URL; give one such as s3://bucket/runs or gs://bucket/runs")
    try:
        import fsspec
    except ImportError:
        raise VaelabError("run.remote: needs the fsspec package; pip install 'vaelab[s3]' (or fsspec and the "
                          "package for your storage, e.g. gcsfs, adlfs)") from None
    protocol = url.split("://", 1)[0]
    try:
        cls = fsspec.get_filesystem_class(protocol)
    except ValueError:
        raise VaelabError(f"run.remote: {protocol}:// is not a storage that fsspec knows; use s3://, gs://, az:// "
                          "or file://") from None
    except ImportError as error:
        package = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}.get(protocol)
        hint = "pip install 'vaelab[s3]'" if package == "s3fs" else f"pip install {package or 'the package fsspec names'}"
        raise VaelabError(f"run.remote: {protocol}:// needs a package that is not installed ({error}); {hint}") from None
    # A copy: botocore rewrites a nested retries dict in place, which would change the run's config.
    options = copy.deepcopy(options or {})
    if protocol in ("file", "local"):  # object stores have no folders to create; a disk does
        options = {"auto_mkdir": True, **options}
    try:
        fs = cls(**options)
    except Exception as error:
        raise VaelabError(f"run.remote_options: {protocol}:// refused them ({one_line(error)}); "
                          "fix run.remote_options") from None
    return fs, cls._strip_protocol(url).rstrip("/")


def check_remote(url: str, options: Optional[dict] = None) -> None:
    """Fail before training, not hours later, when the remote cannot be written."""
    fs, root = open_remote(url, options)
    probe = f"{root}/.vaelab-probe-{socket.gethostname()}-{os.getpid()}"
    try:  # no makedirs: on S3 it would create a bucket that a typo named
        fs.pipe_file(probe, b"ok")
        fs.rm_file(probe)
    except Exception as error:
        raise store_error(url, error) from None


def store_error(url: str, error: Exception, action: str = "write to", setting: Optional[str] = "run.remote") -> VaelabError:
    """A store that cannot be reached may be back later (exit 75); refused credentials or a missing bucket will not (2).
    `setting`: the config key that named the URL; None for a URL given on the command line."""
    kind = TryLater if transient(error) else VaelabError
    if setting is None:
        return kind(f"{url}: cannot {action} it ({one_line(error)}); check the URL and the credentials "
                    "(AWS_* environment variables; AWS_ENDPOINT_URL for a store other than AWS)")
    return kind(f"{setting}: cannot {action} {url} ({one_line(error)}); check the URL, the credentials "
                f"(e.g. AWS_* environment variables) and {setting}_options")


def transient(error: BaseException) -> bool:
    # botocore's and aiohttp's connection errors do not derive from the builtin ones; their names say it.
    return isinstance(error, (ConnectionError, TimeoutError)) or any(
        "ConnectionError" in cls.__name__ or "Timeout" in cls.__name__ for cls in type(error).__mro__)


def one_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def local_files(run_dir: Path) -> dict[str, tuple[int, int, int]]:
    """relative path -> (size, mtime_ns, inode) of the files to mirror: all but dot files and folders."""
    found = {}
    for folder, subfolders, names in os.walk(run_dir):
        subfolders[:] = [s for s in subfolders if not s.startswith(".")]
        for name in names:
            if name.startswith("."):
                continue
            path = Path(folder) / name
            try:
                stat = path.stat()
            except FileNotFoundError:  # deleted (a pruned checkpoint) while we looked
                continue
            found[path.relative_to(run_dir).as_posix()] = (stat.st_size, stat.st_mtime_ns, stat.st_ino)
    return found


def upload_tier(relative: str) -> int:
    """Records first (0), then checkpoints (1), last.pt (2), run.json last of all (3)."""
    if relative == "run.json":
        return 3
    if relative == "checkpoints/last.pt":
        return 2
    return 1 if relative.startswith("checkpoints/") else 0


class RunMirror:
    """Copies one run folder to `<url>/<folder name>` in a background thread (see the module doc)."""

    def __init__(self, run_dir: Path, url: str, options: Optional[dict], log: Callable[[str], None]):
        self.run_dir, self.log = Path(run_dir), log
        self.fs, root = open_remote(url, options)
        self.remote = f"{root}/{self.run_dir.name}"
        self.url = f"{url.rstrip('/')}/{self.run_dir.name}"
        self.uploaded: dict[str, tuple[int, int, int]] = {
            k: tuple(v) for k, v in (read_json(self.run_dir / MANIFEST) or {}).items()}
        self.failing = False
        self._wake = threading.Event()
        self._closing = False
        self._lock = threading.Lock()  # one sync at a time: the thread's and close()'s
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        self.sync()  # the first sync waits, so a remote that cannot be written is known at once
        self._thread = threading.Thread(target=self._run, name="vaelab-mirror", daemon=True)
        self._thread.start()

    def request(self) -> None:
        """Sync soon (after a checkpoint); returns at once."""
        self._wake.set()

    def close(self) -> bool:
        """Stop the thread and sync a last time; True when the remote then holds the whole folder.
        A store that hangs is bounded by its client's own timeouts (botocore: 60 s per request)."""
        self._closing = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        done = self.sync()
        if not done:
            self.log(f"run.remote: {self.url} is behind the local run folder {self.run_dir}; the next resume "
                     "of this run uploads the rest")
        return done

    def _run(self) -> None:
        while not self._closing:
            self._wake.wait(SYNC_EVERY_S)
            self._wake.clear()
            if not self._closing:
                self.sync()

    def sync(self) -> bool:
        """Upload what changed and delete what the run deleted; False (and one log line) on failure."""
        with self._lock:
            try:
                self._sync()
            except Exception as error:  # the network or the store: training goes on regardless
                if not self.failing:
                    self.log(f"run.remote: copying to {self.url} failed ({one_line(error)}); training goes on "
                             "and the copy is retried")
                self.failing = True
                return False
            if self.failing:
                self.log(f"run.remote: copying to {self.url} works again")
            self.failing = False
            return True

    def _sync(self) -> None:
        self._beat()  # also before: a long upload must not make the run look abandoned
        files = local_files(self.run_dir)
        changed = [k for k, v in files.items() if self.uploaded.get(k) != v]
        # Hard links (best.pt, last-epoch.pt and a numbered checkpoint are often last.pt's inode)
        # are copied inside the store from the first one sent, not sent again.
        sent: dict[int, str] = {}
        for tier in sorted({upload_tier(k) for k in changed}):
            group = sorted(k for k in changed if upload_tier(k) == tier)
            firsts, copies = [], []
            for k in group:
                inode = files[k][2]
                if inode in sent:
                    copies.append((sent[inode], k))
                else:
                    sent[inode] = f"{self.remote}/{k}"
                    firsts.append(k)
            self._send(firsts)
            for source, relative in copies:
                self._write(lambda path, source=source: self.fs.copy(source, path), relative)
            # The stats from before the upload: a file that grew meanwhile differs, and goes up again next time.
            self.uploaded.update((k, files[k]) for k in group)
        for relative in sorted(set(self.uploaded) - set(files)):
            try:
                self.fs.rm_file(f"{self.remote}/{relative}")
            except FileNotFoundError:
                pass
            del self.uploaded[relative]
        self._beat()
        if changed:
            write_json(self.run_dir / MANIFEST, self.uploaded)

    def _beat(self) -> None:
        heartbeat = {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}
        self.fs.pipe_file(f"{self.remote}/{HEARTBEAT}", json.dumps(heartbeat).encode())

    def _send(self, relatives: list[str]) -> None:
        # A file deleted since the listing (a pruned checkpoint) is deleted on the remote next time.
        relatives = [k for k in relatives if (self.run_dir / k).exists()]
        if not relatives:
            return
        if is_local(self.fs):
            for k in relatives:
                self._write(lambda path, k=k: self.fs.put_file(str(self.run_dir / k), path), k)
        else:  # one call for many files: the store's client sends them concurrently
            self.fs.put([str(self.run_dir / k) for k in relatives], [f"{self.remote}/{k}" for k in relatives])

    def _write(self, write: Callable[[str], None], relative: str) -> None:
        target = f"{self.remote}/{relative}"
        if is_local(self.fs):  # a plain folder has no atomic write: write beside, then rename
            write(f"{target}.partial")
            self.fs.mv(f"{target}.partial", target)
        else:  # an object store's put or copy replaces the object whole
            write(target)


def is_local(fs) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


# --------------------------------------------------------------------------------------------
# finding and fetching runs on the remote (for --resume)
# --------------------------------------------------------------------------------------------


def remote_runs(url: str, options: Optional[dict]) -> list[tuple[str, dict, str]]:
    """(folder name, run.json, config.yaml text) of each run folder under `url`; unreadable ones are skipped."""
    fs, root = open_remote(url, options)
    try:
        folders = [entry["name"] for entry in fs.ls(root, detail=True) if entry.get("type") == "directory"]
    except FileNotFoundError:
        return []
    except Exception as error:
        raise store_error(url, error, "list") from None
    found = []
    for folder in folders:
        name = folder.rstrip("/").rsplit("/", 1)[-1]
        try:
            status = json.loads(fs.cat_file(f"{folder}/run.json"))
            config_text = fs.cat_file(f"{folder}/config.yaml").decode("utf-8")
            heartbeat = json.loads(fs.cat_file(f"{folder}/{HEARTBEAT}")) if fs.exists(f"{folder}/{HEARTBEAT}") else {}
        except (FileNotFoundError, ValueError, UnicodeDecodeError):
            continue
        status["heartbeat"] = heartbeat
        found.append((name, status, config_text))
    return found


def claim_name(url: str, options: Optional[dict], name: str) -> bool:
    """Whether the new run folder `name` is ours on the remote too. Local folder names are unique
    per disk only: jobs of a Slurm array or an indexed Kubernetes Job start in the same second on
    different machines. A taken name is refused; two that race both write a claim, wait, and read
    it back, and only the last writer keeps the name."""
    fs, root = open_remote(url, options)
    try:
        if fs.exists(f"{root}/{name}"):
            return False
        mine = {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time(), "claim": uuid.uuid4().hex}
        fs.pipe_file(f"{root}/{name}/{HEARTBEAT}", json.dumps(mine).encode())
        time.sleep(CLAIM_SETTLE_S)
        return json.loads(fs.cat_file(f"{root}/{name}/{HEARTBEAT}")).get("claim") == mine["claim"]
    except Exception as error:
        raise store_error(url, error) from None


def maybe_alive(status: dict) -> bool:
    """A run whose status is running and whose mirror synced lately: some machine may still train it."""
    beat = status.get("heartbeat") or {}
    return status.get("status") == "running" and time.time() - float(beat.get("time", 0.0)) < ALIVE_WITHIN_S


def trained_elsewhere(url: str, options: Optional[dict], name: str, status: dict, log: Callable[[str], None]) -> bool:
    """Wait on a maybe-alive run's heartbeat: True once it beats again (its machine trains it),
    False once it is older than ALIVE_WITHIN_S (the machine is gone: the run is ours to continue).
    This is the restart after a SIGKILL: at most ALIVE_WITHIN_S of waiting instead of a second run."""
    fs, root = open_remote(url, options)
    first = float((status.get("heartbeat") or {}).get("time", 0.0))
    log(f"run.remote: {url.rstrip('/')}/{name} says running and synced {time.time() - first:.0f} s ago; waiting up "
        f"to {ALIVE_WITHIN_S:.0f} s for its next heartbeat before continuing it here")
    while time.time() - first < ALIVE_WITHIN_S:
        time.sleep(min(ALIVE_WITHIN_S / 20, max(0.0, first + ALIVE_WITHIN_S - time.time())))
        try:
            beat = json.loads(fs.cat_file(f"{root}/{name}/{HEARTBEAT}"))
        except (FileNotFoundError, ValueError):
            continue
        if float(beat.get("time", 0.0)) != first:
            return True
    return False
