"""Suite-wide settings: one torch thread per test process.

The CI machine has two cores; torch's default of one thread per core made tiny steps up to 50x slower
under contention, and a fixed thread count keeps float reductions (so test trajectories) identical
whatever order the tests run in.
"""

import torch

torch.set_num_threads(1)
