"""The vaelab command run in-process by tests of any folder, with its exit status and output."""

from vaelab.cli import main


def run(capsys, *args):
    """Run the vaelab command in-process; return (exit status, stdout, stderr). No traceback may show."""
    try:
        main(list(args))
        status = 0
    except SystemExit as exit:
        status = exit.code or 0
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return status, out, err
