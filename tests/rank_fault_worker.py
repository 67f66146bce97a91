"""What each rank runs in tests/test_rank_faults.py: `mpiexec -n 2 python rank_fault_worker.py
RANK ITER FAULT train-args...` is `python -m tinygrad_gpt.train train-args...`, but rank RANK
meets FAULT when it draws the batch of iteration ITER:

    kill    os.kill(own pid, SIGKILL): the rank dies without a word (as out of memory)
    raise   RuntimeError("injected fault at iteration ITER"): a bug on that rank

and writes the time.time() of the fault to the file $RANK_FAULT_AT just before.
"""
import os
import signal
import sys
import time
from pathlib import Path

from tinygrad_gpt import ranks, train

RANK, ITER, FAULT = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
draw = ranks.train_batch


def faulty_train_batch(dataset, config, world, it, rng):
    if world.rank == RANK and it == ITER:
        Path(os.environ["RANK_FAULT_AT"]).write_text(f"{time.time():.3f}")
        if FAULT == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError(f"injected fault at iteration {it}")
    return draw(dataset, config, world, it, rng)


if __name__ == "__main__":
    assert FAULT in ("kill", "raise"), FAULT
    ranks.train_batch = faulty_train_batch
    sys.exit(train.main(sys.argv[4:]))
