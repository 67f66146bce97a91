"""tinygrad_gpt: the application layer (command-line tools) on top of tensor/, nn/, gpt/, tokenizer/.

Run `python -m tinygrad_gpt.gradcheck` to check every hand-derived backward pass against
central finite differences.
"""

__version__ = "0.1.0"
