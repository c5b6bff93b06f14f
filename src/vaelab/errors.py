"""The one exception type that reaches the user as a one-line message instead of a traceback, and the
one "did you mean" hint such messages give for a mistyped name."""

from __future__ import annotations

import difflib
from typing import Iterable


class VaelabError(Exception):
    """Bad input or a bad setting. The message names the file, field or key and what to do."""

    exit_status = 2  # of the vaelab command: a retry cannot fix it


class TryLater(VaelabError):
    """A service that is down (object storage), so the same command may work later."""

    exit_status = 75  # EX_TEMPFAIL, as for a full disk: schedulers retry it


def did_you_mean(word: str, known: Iterable[str], prefix: str = "", cutoff: float = 0.5, n: int = 1) -> str:
    """The hint for a mistyped name: "did you mean 'train.lr'?" (up to `n` of the nearest `known`
    names, each after `prefix`), or "" when none is near, so the caller can list the names instead."""
    close = difflib.get_close_matches(str(word), [str(k) for k in known], n=n, cutoff=cutoff)
    if not close:
        return ""
    quoted = [f"'{prefix}{name}'" for name in close]
    return f"did you mean {' or '.join([', '.join(quoted[:-1]), quoted[-1]] if len(quoted) > 1 else quoted)}?"
