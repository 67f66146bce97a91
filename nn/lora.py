"""LoRA (Hu et al. 2021): fine-tune a frozen Linear through a trainable low-rank update.

    y = x @ W^T + b + (alpha / r) (x @ A^T) @ B^T      W (out, in), b (out,) frozen
                                                       A (r, in), B (out, r) trained

B starts at zero, so a wrapped model computes exactly what the base model did, and training
moves only r (in + out) numbers per layer instead of in * out. The op with its hand-derived
backward is tensor/lora.py (F.lora_linear). merge() folds the update into the weight,
W' = W + (alpha / r) B @ A, giving back a plain Linear: no extra cost at inference, and the
state-dict names of the base model, so gpt/hf.py exports it as any GPT-2.

    names = apply_lora(model, rank=8, alpha=16, targets=("attn", "mlp"))  # freezes the rest
    ... train [p for p in model.parameters() if p.requires_grad] ...
    merge_lora(model)                                                       # plain GPT again

What it does not do: dropout on the LoRA path (PEFT's lora_dropout), LoRA on embeddings,
or several adapters on one layer.
"""
import math
import numbers

import tensor.functional as F

from .layers import Linear, uniform
from .module import Module, Parameter

# target -> the module names (suffixes of dotted names) it wraps, as gpt/attention.py and
# gpt/model.py name them: every block's attention projections, and its MLP's two layers.
TARGETS = {"attn": ("attn.query", "attn.key", "attn.value", "attn.attn_out"),
           "mlp": ("mlp.mlp_in", "mlp.mlp_out")}


def check_rank_alpha(rank, alpha):
    """rank a positive integer, alpha a positive finite number, or a ValueError saying so."""
    if isinstance(rank, bool) or not isinstance(rank, numbers.Integral) or rank < 1:
        raise ValueError(f"LoRA rank must be an integer >= 1, got {rank!r} (e.g. rank=8)")
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) \
            or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"LoRA alpha must be a number > 0, got {alpha!r} "
                         "(e.g. alpha=16, twice the rank; the update is scaled by alpha/rank)")


class LoRALinear(Module):
    """A Linear with its weight and bias frozen and a trainable update (alpha / r) B @ A.

    `weight` and `bias` are the wrapped Linear's own Parameters (requires_grad set False),
    so a model's state-dict names stay those of the base ("blocks.0.attn.query.weight"),
    plus "...query.lora_A" (r, in) and "...query.lora_B" (out, r).

    Initialisation, as PEFT and Microsoft's loralib: A ~ U(-1/sqrt(in), 1/sqrt(in)), which is
    kaiming_uniform_(A, a=sqrt(5)) (gain sqrt(2 / (1 + 5)), bound = gain sqrt(3 / fan_in)
    = 1 / sqrt(in), fan_in = in), PyTorch's nn.Linear default; drawn from the generator
    seeded by tensor.manual_seed. B = 0, so the update starts at exactly zero. (Hu et al.
    describe A as Gaussian; the reference code draws it Kaiming-uniform.)
    """

    def __init__(self, linear, rank, alpha):
        if not isinstance(linear, Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(linear).__name__}")
        check_rank_alpha(rank, alpha)
        out_features, in_features = linear.weight.shape
        self.weight = linear.weight                                   # (out, in), frozen
        self.bias = linear.bias                                       # (out,) or None, frozen
        self.weight.requires_grad = False
        if self.bias is not None:
            self.bias.requires_grad = False
        self.rank, self.alpha = int(rank), float(alpha)
        self.scale = self.alpha / self.rank                           # s = alpha / r
        like = dict(dtype=self.weight.dtype, device=self.weight.device)
        bound = 1.0 / math.sqrt(in_features)
        self.lora_A = Parameter(uniform((rank, in_features), bound), **like)   # (r, in)
        self.lora_B = Parameter(self.weight.xp.zeros((out_features, rank)), **like)  # (out, r)

    def forward(self, x):
        return F.lora_linear(x, self.weight, self.bias, self.lora_A, self.lora_B, self.scale)

    def merge(self):
        """A plain Linear computing the same map: W' = W + (alpha / r) B @ A, the same bias.

        New Parameters (the wrapped ones are left as they are), keeping their requires_grad
        flags (False: unfreeze them to train the merged layer)."""
        delta = (self.lora_B.data @ self.lora_A.data) * self.scale    # (out, r) @ (r, in)
        merged = Linear.__new__(Linear)                # no random init: filled right here
        merged.weight = _parameter_like(self.weight.data + delta, self.weight)
        merged.bias = None if self.bias is None else _parameter_like(self.bias.data.copy(),
                                                                     self.bias)
        merged.training = self.training
        return merged

    def extra_repr(self):
        out_features, in_features = self.weight.shape
        return (f"{in_features}, {out_features}, bias={self.bias is not None}, "
                f"rank={self.rank}, alpha={self.alpha}")


def _parameter_like(data, like):
    p = Parameter(data, dtype=like.dtype, device=like.device)
    p.requires_grad = like.requires_grad
    return p


def _parent_and_attribute(modules, name):
    """The module holding `name` ("blocks.0.attn.query") and its attribute name ("query")."""
    parent, _, attribute = name.rpartition(".")
    return modules[parent], attribute


def _target_list(targets):
    """("attn", "mlp") from a sequence or a comma-separated string ("attn,mlp")."""
    if isinstance(targets, str):
        targets = targets.split(",")
    targets = [t.strip() for t in targets]
    valid = ", ".join(TARGETS)
    if not targets or not all(targets):
        raise ValueError(f"LoRA targets must name at least one of: {valid}")
    for target in targets:
        if target not in TARGETS:
            raise ValueError(f"unknown LoRA target {target!r}: valid targets are {valid}")
    return list(dict.fromkeys(targets))             # each once, in the order given


def apply_lora(model, rank, alpha, targets=("attn", "mlp")):
    """Wrap the model's Linear layers named by `targets` in LoRALinear, in place, and
    freeze every other parameter (requires_grad False, any old .grad dropped).

    "attn": each block's attn.query, attn.key, attn.value, attn.attn_out; "mlp": its
    mlp.mlp_in and mlp.mlp_out (found by walking named_modules, so any model whose layers
    carry these names works). Returns the dotted names of the wrapped modules.
    """
    check_rank_alpha(rank, alpha)
    targets = _target_list(targets)
    modules = dict(model.named_modules())
    chosen = []
    for target in targets:
        suffixes = TARGETS[target]
        found = [name for name, m in modules.items()
                 if name.split(".")[-2:] in [s.split(".") for s in suffixes]]
        wrapped = [name for name in found if isinstance(modules[name], LoRALinear)]
        if wrapped:
            raise ValueError(f"LoRA is already applied to {wrapped[0]}: merge_lora(model) "
                             "first, or apply it once")
        linears = [name for name in found if isinstance(modules[name], Linear)]
        if not linears:
            raise ValueError(f"LoRA target {target!r} matches no Linear module of this "
                             f"{type(model).__name__} (looked for names ending in "
                             f"{', '.join(suffixes)}); valid targets: {', '.join(TARGETS)}")
        chosen.extend(linears)
    for p in model.parameters():
        p.requires_grad, p.grad = False, None
    chosen = set(chosen)
    chosen = [name for name in modules if name in chosen]          # in the model's order
    for name in chosen:
        parent, attribute = _parent_and_attribute(modules, name)
        setattr(parent, attribute, LoRALinear(modules[name], rank, alpha))
    return chosen


def merge_lora(model):
    """Replace every LoRALinear in the model by its merged Linear (LoRALinear.merge), in
    place, and return the model: a plain model again (a GPT that gpt.hf.save_pretrained
    writes). A model without LoRA is returned unchanged; a bare LoRALinear, merged."""
    if isinstance(model, LoRALinear):
        return model.merge()
    modules = dict(model.named_modules())
    for name, module in modules.items():
        if isinstance(module, LoRALinear):
            parent, attribute = _parent_and_attribute(modules, name)
            setattr(parent, attribute, module.merge())
    return model
