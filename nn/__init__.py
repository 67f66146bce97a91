"""nn: neural-network modules and optimizers built only from `tensor` ops.

Filled in by the nn/gpt issue; this package exists so the layout is in place from day one.
"""
