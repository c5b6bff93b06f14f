"""Object keys and URLs from a store, turned into local paths without ever leaving the local folder.

A store's keys are plain strings: `runs/A/sub/../../../x` and `runs/A//etc/x` are valid S3 keys,
and pathlib joins `folder / "/etc/x"` to `/etc/x`. Whoever can write to the bucket could then make
a fetch or a `--resume` download write anywhere the user can. vaelab's own runs never have such
keys, so one is refused with a one-line error rather than skipped: it is a sign that something
else wrote there. The checks are lexical (on the key's parts), for POSIX and Windows separators
alike, so they hold before any file exists.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath

from vaelab.errors import VaelabError


def escapes(relative: str) -> bool:
    """Whether `relative` (a key below a folder's prefix) is absolute or climbs out with `..`,
    read with `/` and, as Windows would, with `\\` too."""
    if not relative:
        return True
    for flavour in (PurePosixPath(relative), PureWindowsPath(relative)):
        if flavour.anchor or ".." in flavour.parts:
            return True
    return False


def local_path(folder: Path, relative: str, url: str) -> Path:
    """`folder / relative` for the object `relative` below `url`; a one-line error if it would be
    outside `folder`."""
    if escapes(relative):
        raise VaelabError(f"{url}: the object key {relative!r} leads outside the local folder {folder} (an absolute "
                          "path or '..'); vaelab refuses to write it: delete that object from the store")
    return Path(folder) / relative


def plain_name(name: str, url: str) -> str:
    """A run folder's name on the store, checked to be one plain path component."""
    if name in ("", ".", "..") or "/" in name or "\\" in name:
        raise VaelabError(f"{url}: {name!r} is not a run folder's name (one plain folder name); vaelab refuses "
                          "to download it: delete it from the store or give the run's own URL")
    return name


def cache_relative(url: str) -> str:
    """`protocol/bucket/path` of a URL, the copy's folder below the fetch cache. The path of a
    `file:///...` URL is absolute: its leading `/` is dropped so that the copy stays in the cache."""
    protocol, _, rest = url.rstrip("/").partition("://")
    relative = f"{protocol}/{rest.lstrip('/')}"
    if escapes(relative):
        raise VaelabError(f"{url}: a run URL with '..' would put its local copy outside the cache; "
                          "give the run's URL without '..'")
    return relative
