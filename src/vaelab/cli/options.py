"""What the command modules share: the config and run-folder options and arguments, and stderr.

Only click and the config are imported here; a command imports the library it calls inside its
own body, so that `vaelab --help` does not pay for importing torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from vaelab.config import Config, load_config

CONFIG_OPTION = click.option(
    "-c", "--config", "config_path", type=click.Path(path_type=Path), default=None,
    help="YAML config; without it, the embedded default (the built-in figure set at 64 px).",
)
SET_OPTION = click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE",
    help="Override a config key, e.g. --set data.fit=stretch (value parsed as YAML). Repeatable.",
)


class RunDirType(click.ParamType):
    """A run folder, or its URL on object storage (s3://bucket/runs/NAME): fetched into the cache."""

    name = "run_dir"

    def convert(self, value, param, ctx) -> Path:
        from vaelab.remote.fetch import fetch_run, is_url

        if not is_url(value):
            return Path(value)
        return fetch_run(str(value), Config().data.resolved_cache_dir() / "remote-runs")


RUN_DIR = RunDirType()


def expand_run_dirs(ctx, param, values: tuple[str, ...]) -> tuple[Path, ...]:
    """Run folders; a URL of a folder of runs (s3://bucket/runs) stands for each run in it."""
    from vaelab.remote.fetch import is_url, run_urls

    return tuple(RUN_DIR.convert(url, param, ctx) for value in values
                 for url in (run_urls(value) if is_url(value) else [value]))


def config_from(config_path: Optional[Path], overrides: tuple[str, ...]) -> Config:
    return load_config(config_path, overrides)


def echo_err(message: str) -> None:
    click.echo(message, err=True)


# --------------------------------------------------------------------------------------------
# the commands that take a trained run: evaluate, prior, export and the use-the-model ones
# --------------------------------------------------------------------------------------------

RUN_DIR_ARGUMENT = click.argument("run_dir", type=RUN_DIR)
CHECKPOINT_OPTION = click.option(
    "--checkpoint", default="best", show_default=True,
    help="Weights to use: best, last, or a file name in RUN_DIR/checkpoints (e.g. epoch-0016.pt).",
)
DEVICE_OPTION = click.option(
    "--device", default="auto", show_default=True, help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.",
)
DATA_CONFIG_OPTION = click.option(
    "-c", "--config", "config_path", type=click.Path(path_type=Path), default=None,
    help="Use this config's data (images, metadata, filter, split) instead of the run's; images are "
         "still fitted and scaled as the run was trained.",
)
DATA_SET_OPTION = click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE",
    help="Override a data key of the run's config (or of -c), e.g. --set data.filter.include=[sitting]. Repeatable.",
)
PRIOR_OPTION = click.option(
    "--prior", type=click.Choice(["auto", "learned", "normal"]), default="auto", show_default=True,
    help="auto: the run's learned prior (vaelab prior) where there is one, else N(0, I); learned: require it; "
         "normal: N(0, I).",
)
