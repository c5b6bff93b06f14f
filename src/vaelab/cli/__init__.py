"""The `vaelab` command. Each command parses its options, calls the library, and prints.

Bad input reaches the user as one line, `error: <file or key>: <what is wrong>; <what to do>`,
with exit status 2; never as a traceback. `main` below is where that happens, for every command.

The commands live by concern: `data` (vaelab data ...), `train` (train, prior), `experiments`
(compare, sweep, report, evaluate, export) and `use` (reconstruct, sample, interpolate, traverse,
encode, decode); the options they share are in `options`. A command imports the library it calls
inside its body, so that `vaelab --help` does not import torch.
"""

from __future__ import annotations

import sys
import warnings
from typing import Optional

import click

from vaelab.cli import data, experiments, train, use
from vaelab.errors import VaelabError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="vaelab")
def cli() -> None:
    """vaelab: from a folder of figure photos to trained, compared and sampled VAEs."""


# In the order cli.py declared them before it became a package; `vaelab --help` sorts them anyway.
cli.add_command(data.data)
cli.add_command(train.train)
cli.add_command(experiments.compare)
cli.add_command(experiments.sweep)
cli.add_command(experiments.report)
cli.add_command(experiments.evaluate_cmd)
cli.add_command(use.reconstruct_cmd)
cli.add_command(use.sample_cmd)
cli.add_command(train.prior_cmd)
cli.add_command(use.interpolate_cmd)
cli.add_command(use.traverse_cmd)
cli.add_command(use.encode_cmd)
cli.add_command(use.decode_cmd)
cli.add_command(experiments.export_cmd)


def _one_line_warnings(message, category, filename, lineno, file=None, line=None) -> None:
    click.echo(f"warning: {message}", err=True)


def main(argv: Optional[list[str]] = None) -> None:
    warnings.showwarning = _one_line_warnings
    try:
        status = cli.main(args=argv, prog_name="vaelab", standalone_mode=False)
    except VaelabError as error:
        import os

        if os.environ.get("RANK", "0") == "0":  # data-parallel: rank 0 alone reports what every rank found
            click.echo(f"error: {error}", err=True)
        sys.exit(error.exit_status)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    if isinstance(status, int) and status:
        sys.exit(status)
