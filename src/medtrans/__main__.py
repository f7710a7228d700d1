"""``python -m medtrans``: the command line, also the entry point ``torchrun -m medtrans`` starts."""

from medtrans.cli import main

main()
