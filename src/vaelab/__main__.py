"""`python -m vaelab ...`: the same command as `vaelab ...`, and what torchrun starts (`torchrun ... -m vaelab train`)."""

from vaelab.cli import main

# Guarded: a process started with the 'spawn' method imports this module again as __mp_main__,
# and must not start a second command.
if __name__ == "__main__":
    main()
