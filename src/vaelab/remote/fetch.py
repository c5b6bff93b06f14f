"""Reading a run folder that lives on object storage: `vaelab compare s3://bucket/runs/NAME ...`.

The commands that read runs (compare, report, evaluate, sample, reconstruct, ...) take a URL
wherever they take a run folder; compare and report also take the URL of a folder of runs
(`run_urls`), as a shell glob would give them local ones. `fetch_run` keeps a local copy of it under
`<cache>/remote-runs/<protocol>/<bucket>/<path>` and returns that folder, so the commands read
local files as always. A second fetch downloads only files whose size or version tag (S3's
ETag, a file's mtime) changed, and drops files the remote no longer has.

Checkpoints are left out, since compare and report never read them and a 640 px model's are
gigabytes; `load_run` fetches the one checkpoint it loads (`fetch_checkpoints`). Credentials
and endpoints come from the environment (AWS_* variables, AWS_ENDPOINT_URL for MinIO and the
like): these commands have no config to hold `run.remote_options`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

from vaelab.errors import VaelabError
from vaelab.files import atomic_folder, atomic_path, fsync_dir, read_json, write_json
from vaelab.remote.keys import cache_relative, escapes, local_path, plain_name
from vaelab.remote.mirror import HEARTBEAT, MANIFEST, local_files, open_remote, store_error

FETCHED = ".fetched.json"  # {"url": the run's URL, "files": {relative path: "size:version"}}
VERSION_KEYS = ("ETag", "etag", "md5Hash", "mtime", "LastModified", "last_modified", "updated")


def is_url(value: object) -> bool:
    return "://" in str(value)


def run_urls(url: str) -> list[str]:
    """`url` if it is a run folder, else the run folders right under it (a sweep's, a run.remote's)."""
    fs, path = open_remote(url)
    url = url.rstrip("/")
    try:
        if fs.exists(f"{path}/run.json"):
            return [url]
        found = sorted(match.rstrip("/").rsplit("/", 2)[-2] for match in fs.glob(f"{path}/*/run.json"))
    except Exception as error:
        raise store_error(url, error, "list", setting=None) from None
    return [f"{url}/{name}" for name in found] or [url]  # none: fetch_run says there is no run


def fetch_run(url: str, cache_root: Path) -> Path:
    """The local copy of the run folder at `url`, brought up to date, checkpoints left out."""
    folder = Path(cache_root) / cache_relative(url)
    return sync_down(url.rstrip("/"), folder, lambda there: [k for k in there if not k.startswith("checkpoints/")])


def fetch_checkpoints(run_dir: Path, names: Sequence[str]) -> None:
    """Bring the first of `checkpoints/<names>` that the remote has up to date in a fetched run."""
    state = read_json(Path(run_dir) / FETCHED)
    if not state:
        return  # a run folder of this machine, not a fetched copy
    wanted = [f"checkpoints/{name}" for name in names]
    sync_down(state["url"], Path(run_dir), lambda there: [k for k in wanted if k in there][:1])


def download_run(url: str, options: Optional[dict], name: str, root: Path) -> Path:
    """Fetch `<url>/<name>` whole, checkpoints included, into `<root>/<name>` to train on (--resume):
    all of it or nothing, through a hidden folder that is renamed when complete. Durable, as the
    run's own writes of run.json and the checkpoints are: a power cut right after must not leave
    an emptied run.json or checkpoint for the resume to find."""
    target = Path(root) / plain_name(name, f"{url.rstrip('/')}/{name}")
    if target.exists():
        raise VaelabError(f"{target}: already exists; resume it with --resume {target}, or move it away to "
                          f"fetch {url.rstrip('/')}/{name}")
    # A fixed name, so that a retry replaces what a killed download left.
    with atomic_folder(target, temporary=Path(root) / f".{name}.download") as partial:
        sync_down(f"{url.rstrip('/')}/{name}", partial, lambda there: there, options, durable=True)
        # Now a run folder of this machine, whose files the remote already has: nothing to upload again.
        (partial / FETCHED).unlink()
        write_json(partial / MANIFEST, {k: list(v) for k, v in local_files(partial).items()})
    fsync_dir(Path(root))  # the rename of the finished folder
    return target


def sync_down(url: str, folder: Path, choose: Callable[[list[str]], list[str]], options: Optional[dict] = None,
              durable: bool = False) -> Path:
    """Download the files `choose` picks from the remote's list where they changed; delete the
    fetched files that the remote no longer has. A key that leads outside `folder` is refused
    before anything is written (`vaelab.remote.keys`). durable: fsync each file (`vaelab.files`)."""
    fs, path = open_remote(url, options)
    try:
        listing = fs.find(path, detail=True)
    except Exception as error:
        raise store_error(url, error, "list", setting=None) from None
    if not listing:
        raise VaelabError(f"{url}: no run folder there; check the URL (vaelab lists nothing under it)")
    versions = {}
    for name, info in listing.items():
        relative = name[len(path):].removeprefix("/")  # the `/` after the prefix, no more
        if relative:
            local_path(folder, relative, url)  # raises for `../` or an absolute key
        if relative and relative != HEARTBEAT and not relative.startswith("."):
            versions[relative] = f"{info.get('size')}:{next((info[k] for k in VERSION_KEYS if k in info), '')}"
    known: dict = (read_json(folder / FETCHED) or {}).get("files", {})
    try:
        for relative in choose(sorted(versions)):
            target = folder / relative  # checked above, before anything was written
            if known.get(relative) == versions[relative] and target.is_file():
                continue
            with atomic_path(target, durable) as temporary:
                fs.get_file(f"{path}/{relative}", str(temporary))
            known[relative] = versions[relative]
    except Exception as error:
        raise store_error(url, error, "download from", setting=None) from None
    finally:
        for relative in [k for k in known if k not in versions]:  # gone there (a pruned checkpoint)
            if not escapes(relative):  # .fetched.json is a local file, but a path is checked wherever it is joined
                (folder / relative).unlink(missing_ok=True)
            del known[relative]
        write_json(folder / FETCHED, {"url": url, "files": known})
    return folder
