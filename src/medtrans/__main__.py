"""``python -m medtrans``: the command line, also the entry point ``torchrun -m medtrans`` starts."""

import os

from medtrans.cli import main

if int(os.environ.get("WORLD_SIZE", "1")) > 1:
    # under torchrun: an unexpected exception's traceback goes into torchrun's failure summary (by rank)
    from torch.distributed.elastic.multiprocessing.errors import record

    main = record(main)

main()
