"""Who started this process: the MPI launcher's environment variables, read without
importing MPI (nn/distributed.py's world() asks here first: no launcher, or one rank, and
mpi4py is never imported).
"""
import os

# Where each launcher says how many ranks there are and which one this is; the size is
# unknown (None) under a bare PMIx launcher (Slurm's srun --mpi=pmix): MPI is asked then.
LAUNCHERS = (  # (launcher, size variable, rank variable, local-rank variable)
    ("Open MPI", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK"),
    ("MPICH/Hydra", "PMI_SIZE", "PMI_RANK", "MPI_LOCALRANKID"),
    ("MVAPICH2", "MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_LOCAL_RANK"),
    ("PMIx", None, "PMIX_RANK", None),
)
INSTALL = 'pip install -e ".[mpi]"'


class Launch:
    """What the launcher's environment says: launcher name, size (None: ask MPI), rank,
    local_rank (None when it does not say)."""

    def __init__(self, launcher, size, rank, local_rank):
        self.launcher, self.size, self.rank, self.local_rank = launcher, size, rank, local_rank

    def __repr__(self):
        return (f"Launch({self.launcher!r}, size={self.size}, rank={self.rank}, "
                f"local_rank={self.local_rank})")


def launch_info(environ=None):
    """The Launch the environment describes (first launcher of LAUNCHERS found), or None
    when no MPI launcher started this process. Reads variables only; imports nothing."""
    environ = os.environ if environ is None else environ

    def number(name):
        if name is None or name not in environ:
            return None
        try:
            return int(environ[name])
        except ValueError:
            raise ValueError(f"{name}={environ[name]!r} is not a whole number: the MPI "
                             "launcher's environment is broken; start with mpiexec") from None
    for launcher, size_var, rank_var, local_var in LAUNCHERS:
        if rank_var in environ:
            size, rank = number(size_var), number(rank_var)
            if rank < 0 or (size is not None and not 0 <= rank < size):
                raise ValueError(f"{rank_var}={rank} does not fit {size_var}={size}: the MPI "
                                 "launcher's environment is broken; start with mpiexec")
            return Launch(launcher, size, rank, number(local_var))
    return None
