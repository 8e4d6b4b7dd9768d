"""``python -m exaug`` (and ``torchrun -m exaug``) run the CLI."""

from exaug.cli import main

main()
