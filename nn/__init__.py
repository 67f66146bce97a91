"""nn: neural-network modules and optimizers built only from `tensor` ops.

Reading order: module.py (Module, Parameter, state_dict, freeze/unfreeze), layers.py
(Linear, Embedding, LayerNorm, Dropout, GELU), optim.py (AdamW, SGD, clip_grad_norm,
get_lr), then parallel.py (DataParallel: the two halves of a batch on the two CPU cores),
then training on several processes: launch.py (who started this process), distributed.py
(the World of MPI ranks and its collectives; mpi4py is imported only when mpiexec started
more than one rank), reducer.py
(GradientReducer: the gradients averaged over the ranks), zero.py (ZeroAdamW: AdamW with
its moments sharded over the ranks, ZeRO-1), nccl.py (NcclWorld: ranks on GPUs, CuPy arrays
through NCCL; CuPy is imported only when a GPU world is made). docs/parallel.md has the math.
"""
from .layers import GELU, Dropout, Embedding, LayerNorm, Linear
from .lora import LoRALinear, apply_lora, merge_lora
from .module import Module, ModuleList, Parameter, forward_backward, module_scopes
from .optim import SGD, AdamW, clip_grad_norm, decay_groups, get_lr
from .parallel import DataParallel
from . import distributed, nccl
from .reducer import GradientReducer
from .zero import ZeroAdamW

__all__ = ["Module", "ModuleList", "Parameter", "forward_backward", "module_scopes", "Linear",
           "Embedding", "LayerNorm", "Dropout", "GELU", "AdamW", "SGD", "clip_grad_norm",
           "decay_groups", "get_lr", "DataParallel", "LoRALinear", "apply_lora", "merge_lora",
           "distributed", "nccl", "GradientReducer", "ZeroAdamW"]
