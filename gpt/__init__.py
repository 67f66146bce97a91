"""gpt: the GPT-2 model, built only from `nn` modules and `tensor` ops.

Filled in by the nn/gpt issue; this package exists so the layout is in place from day one.
"""
