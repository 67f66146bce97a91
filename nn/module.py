"""Module: the base class of every layer and model, and Parameter, a trainable Tensor.

A module's parameters and submodules are simply its attributes, found in the order they
were assigned (no registration calls, no metaclass): a Parameter attribute is a parameter,
a Module attribute is a submodule, and names are dotted paths ("blocks.0.attn.query.weight").
A Parameter reachable twice (a tied weight) is listed once, under its first name.

Freezing (fine-tuning a few layers): `model.freeze("blocks.0", "token_embedding")` sets
requires_grad False on those parameters, `unfreeze` back; backward then computes nothing
for them, and the optimizers (optim.py) keep state only for trainable parameters.
"""
import difflib

from tensor import Tensor, backend


class Parameter(Tensor):
    """A Tensor that a Module trains: requires_grad=True, float32 unless dtype says otherwise."""
    __slots__ = ()

    def __init__(self, data, dtype=None, device=None):
        super().__init__(data, requires_grad=True, dtype=dtype, device=device)


_scopes = None   # while inside `with module_scopes(model)`: (names by id, stack of names)


class module_scopes:
    """`with module_scopes(model) as scope:` keeps `scope.current()`, the dotted name of the
    module running right now ("blocks.0.attn.query"), for tracers and shape tables."""

    def __init__(self, model, root="model"):
        self.names = {id(m): name for name, m in model.named_modules(root)}
        self.stack = []

    def current(self):
        return self.stack[-1] if self.stack else ""

    def __enter__(self):
        global _scopes
        self._previous, _scopes = _scopes, self
        return self

    def __exit__(self, *exc):
        global _scopes
        _scopes = self._previous


class Module:
    """Base class: subclasses set attributes in __init__ and define forward()."""

    training = True

    def __call__(self, *args, **kwargs):
        if _scopes is None:
            return self.forward(*args, **kwargs)
        _scopes.stack.append(_scopes.names.get(id(self), type(self).__name__))
        try:
            return self.forward(*args, **kwargs)
        finally:
            _scopes.stack.pop()

    # ----- walking the tree -------------------------------------------------------------
    def children(self):
        """(name, submodule) pairs, in assignment order."""
        return [(k, v) for k, v in vars(self).items() if isinstance(v, Module)]

    def named_modules(self, prefix=""):
        """(dotted name, module) for this module (named `prefix`) and all below, depth first."""
        found, stack = [], [(prefix, self)]
        while stack:
            name, module = stack.pop()
            found.append((name, module))
            stack.extend(reversed([(f"{name}.{k}" if name else k, m)
                                   for k, m in module.children()]))
        return found

    def modules(self):
        """This module and every module below it, depth first."""
        return [m for _, m in self.named_modules()]

    def named_parameters(self, prefix=""):
        """(dotted name, Parameter) for every parameter, each listed once."""
        seen, result = set(), []
        stack = [(f"{prefix}." if prefix else "", self)]
        while stack:
            path, module = stack.pop()
            submodules = []
            for name, value in vars(module).items():
                full = f"{path}{name}"
                if isinstance(value, Parameter) and id(value) not in seen:
                    seen.add(id(value))
                    result.append((full, value))
                elif isinstance(value, Module):
                    submodules.append((full + ".", value))
            stack.extend(reversed(submodules))
        return result

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def num_parameters(self):
        """Values (elements) in every parameter, frozen or not."""
        return sum(p.size for p in self.parameters())

    def num_trainable_parameters(self):
        """Values in the parameters that train (requires_grad True): what an optimizer made
        now holds state for."""
        return sum(p.size for p in self.parameters() if p.requires_grad)

    # ----- freezing ---------------------------------------------------------------------
    def freeze(self, *names):
        """Stop training the named parameters: requires_grad = False and .grad = None, so
        backward computes no gradient for them (their ops skip those products) and an
        optimizer made afterwards holds no state for them. Returns how many values
        (elements) changed from trainable to frozen.

        names: parameter-name prefixes as named_parameters() prints them, matched on whole
        dotted components: "blocks.1" is every parameter under blocks.1 ("blocks.1.attn.
        query.weight"), not blocks.11's; a full name is one parameter. No names: every
        parameter. A name that matches nothing is a ValueError listing close valid ones,
        and then nothing is changed. A tied weight is one parameter, under its first name.
        """
        return self._set_trainable(names, False, "freeze")

    def unfreeze(self, *names):
        """Train the named parameters again (requires_grad = True); names as in freeze().
        Returns how many values changed from frozen to trainable. Build a new optimizer
        afterwards: one made before holds no state for them."""
        return self._set_trainable(names, True, "unfreeze")

    def _set_trainable(self, names, trainable, caller):
        params = self.named_parameters()
        for name in names:
            if not isinstance(name, str):
                raise TypeError(f"{caller}: names are strings like 'blocks.0', got {name!r}")
            if not any(under(full, name) for full, _ in params):
                raise ValueError(f"{caller}: no parameter is named {name!r} or lies under "
                                 f"it; {close_names(name, params)}")
        changed = 0
        for full, p in params:
            if names and not any(under(full, name) for name in names):
                continue
            if p.requires_grad != trainable:
                changed += p.size
            p.requires_grad = trainable
            if not trainable:
                p.grad = None
        return changed

    # ----- modes, gradients, devices ----------------------------------------------------
    def train(self, mode=True):
        """Training mode (dropout active) for this module and everything below it."""
        for module in self.modules():
            module.training = mode
        return self

    def eval(self):
        """Evaluation mode (dropout off)."""
        return self.train(False)

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    def to(self, device):
        """Move every parameter to a device in place (the Parameter objects stay, so an
        optimizer made before or after sees them there)."""
        device = backend.check_device(device)
        for p in self.parameters():
            p.data, p.device, p.grad = backend.to_device(p.data, device), device, None
        return self

    # ----- saving and loading -----------------------------------------------------------
    def state_dict(self):
        """{dotted name: array} for every parameter (the arrays themselves, not copies)."""
        return {name: p.data for name, p in self.named_parameters()}

    def load_state_dict(self, state, strict=True):
        """Copy arrays into the parameters, in place.

        strict=True: every missing, unexpected or wrongly-shaped key is an error, all of them
        named in one message. strict=False: loads what matches and returns the problems.
        """
        params = dict(self.named_parameters())
        missing = sorted(set(params) - set(state))
        unexpected = sorted(set(state) - set(params))
        wrong_shape = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs model {params[k].shape}"
                             for k in set(params) & set(state)
                             if tuple(state[k].shape) != params[k].shape)
        problems = [f"{label}: {', '.join(keys)}" for label, keys in
                    (("missing keys", missing), ("unexpected keys", unexpected),
                     ("wrong shapes", wrong_shape)) if keys]
        if strict and problems:
            raise ValueError("load_state_dict: " + "; ".join(problems))
        for name, p in params.items():
            if name in state and tuple(state[name].shape) == p.shape:
                p.data[...] = backend.to_device(state[name], p.device)
        return problems

    def __repr__(self):
        lines = [f"{type(self).__name__}("]
        for name, child in self.children():
            lines.append(f"  ({name}): " + repr(child).replace("\n", "\n  "))
        extra = self.extra_repr()
        return (lines[0] + extra + ")") if len(lines) == 1 else "\n".join(lines) + "\n)"

    def extra_repr(self):
        return ""


class ModuleList(Module):
    """A list of modules whose parameters are named by index ("blocks.0.", "blocks.1.")."""

    def __init__(self, modules=()):
        for i, module in enumerate(modules):
            setattr(self, str(i), module)

    def __len__(self):
        return len(self.children())

    def __iter__(self):
        return iter(m for _, m in self.children())

    def __getitem__(self, i):
        return self.children()[i][1]

    def append(self, module):
        setattr(self, str(len(self)), module)
        return self


def under(full, name):
    """True when parameter name `full` is `name` or lies under it, whole dotted components
    compared: under("blocks.1.attn.query.weight", "blocks.1") but not "blocks.11..."."""
    return full == name or full.startswith(name + ".")


def close_names(name, params):
    """The valid names nearest to `name` (every dotted prefix of a parameter's name), for
    an error message; the top-level names when none is close."""
    prefixes = sorted({".".join(full.split(".")[:i + 1]) for full, _ in params
                       for i in range(full.count(".") + 1)})
    close = difflib.get_close_matches(name, prefixes, n=5, cutoff=0.6)
    if close:
        return "did you mean " + ", ".join(close) + "?"
    top = list(dict.fromkeys(full.split(".")[0] for full, _ in params))
    return ("names are dotted paths as named_parameters() prints them, under: "
            + (", ".join(top) if top else "(this module has no parameters)"))


def forward_backward(model, x, y, scale=1.0, leaf_done=None):
    """Forward and backward of scale * loss for one batch, `_, loss = model(x, y)`; returns
    the loss as a float. The unit of work of a training step (tinygrad_gpt/train.py);
    nn.DataParallel.forward_backward computes the same on two halves at once. leaf_done:
    Tensor.backward's (nn.GradientReducer.start's, on N ranks)."""
    _, loss = model(x, y)
    (loss * scale).backward(leaf_done=leaf_done)
    return float(loss.item())
