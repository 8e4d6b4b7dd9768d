"""``python -m exaug`` (and ``torchrun -m exaug``) run the CLI."""

from exaug.launch import main

main()
