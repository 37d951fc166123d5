"""Under pytest-xdist (``make test`` runs two workers, one per core of the CI machine) each worker, and every
process it starts (CLI runs, notebook kernels, torchrun ranks), uses one torch thread: two workers of two
threads each would ask four threads of two cores, and each would run slower than alone."""

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
