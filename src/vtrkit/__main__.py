"""``python -m vtrkit`` (also what ``torchrun -m vtrkit`` launches)."""

from vtrkit.cli import main

main()
