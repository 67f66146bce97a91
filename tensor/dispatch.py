"""Which code runs an op: its reference implementation (the default), or a faster kernel.

Every op in tensor/ is written once as whole-array math: the reference, the code to read.
tensor.fast (switched on by `tensor.fast.enable()`, as the training CLI does) registers
kernels that compute the same thing faster on the CPU (both cores, cache-sized blocks);
tests check each against its reference. Without enable(), nothing is registered and
every op runs its reference code.

    dispatch.kernel("gelu", reference_gelu)     # the registered kernel, else the reference
"""
_kernels = {}   # op name -> kernel with the reference's signature (filled by tensor.fast)


def kernel(name, reference):
    """The kernel registered for `name`, or `reference` when there is none."""
    return _kernels.get(name, reference)


def register(name, fn):
    _kernels[name] = fn


def unregister(name):
    _kernels.pop(name, None)


def registered():
    """The names that run a registered kernel instead of their reference, sorted."""
    return sorted(_kernels)
