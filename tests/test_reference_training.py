"""Training parity with nanoGPT in PyTorch (benchmarks/nanogpt_reference.py), where torch is
installed: from the same weights, our GPT with nn.AdamW and nn.clip_grad_norm takes the
same steps as nanoGPT's model with torch.optim.AdamW and clip_grad_norm_.

This is the whole training step end to end (embedding, attention, MLP, tied head,
cross-entropy, backward, clipping, decay groups, AdamW), in float32 as the benchmarks run
it, with a vocabulary on each side of the embedding's one-hot / sorted scatter-add switch.
"""
import os
import sys

import numpy as np
import pytest

import nn
from gpt import GPT, GPTConfig
from gpt.hf import from_hf_state_dict
from tensor.embedding import ONE_HOT_MAX_ROWS

torch = pytest.importorskip("torch")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import nanogpt_reference as ref  # noqa: E402

CONV1D = ("c_attn", "c_proj", "c_fc")   # nanoGPT's Linear (out, in) is GPT-2's Conv1D (in, out)


def ours_from_nanogpt(model):
    """nanoGPT's state dict, in GPT-2's file layout, through our importer (gpt/hf.py)."""
    state = {}
    for name, value in model.state_dict().items():
        if name == "lm_head.weight":                       # tied: the same array as wte
            continue
        array = value.detach().numpy().copy()
        state[name] = array.T if name.endswith(tuple(f"{n}.weight" for n in CONV1D)) else array
    return from_hf_state_dict(state)


@pytest.mark.parametrize("vocab_size", [65, ONE_HOT_MAX_ROWS + 976])
def test_from_the_same_weights_our_training_steps_match_nanogpt_in_pytorch(vocab_size):
    torch.manual_seed(0)
    torch.set_num_threads(2)
    cfg = dict(vocab_size=vocab_size, block_size=32, n_layer=2, n_head=4, n_embd=32,
               dropout=0.0, bias=True)
    theirs = ref.GPT(ref.GPTConfig(**cfg))
    ours = GPT(GPTConfig(**cfg))
    ours.load_state_dict(ours_from_nanogpt(theirs))
    rng = np.random.default_rng(vocab_size)
    x, y = rng.integers(0, vocab_size, (3, 32)), rng.integers(0, vocab_size, (3, 32))
    opt = nn.AdamW(nn.decay_groups(ours.parameters(), 0.1), lr=3e-3, betas=(0.9, 0.99))
    topt = theirs.configure_optimizers(0.1, 3e-3, (0.9, 0.99), "cpu")
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    losses, norms = [], []
    for _ in range(6):
        opt.zero_grad()
        loss = ours(x, y)[1]
        loss.backward()
        norm = nn.clip_grad_norm(ours.parameters(), 0.5)     # below the norms seen: clips
        opt.step()
        topt.zero_grad(set_to_none=True)
        tloss = theirs(xt, yt)[1]
        tloss.backward()
        tnorm = torch.nn.utils.clip_grad_norm_(theirs.parameters(), 0.5)
        topt.step()
        losses.append((loss.item(), tloss.item()))
        norms.append((norm, float(tnorm)))
    ours_l, theirs_l = np.array(losses).T
    assert ours_l[-1] < ours_l[0] - 0.05                     # it trains, visibly
    np.testing.assert_allclose(ours_l, theirs_l, rtol=2e-4)
    np.testing.assert_allclose(*np.array(norms).T, rtol=2e-3)
    final = ours_from_nanogpt(theirs)
    for name, p in ours.named_parameters():
        np.testing.assert_allclose(p.data, final[name], rtol=1e-3, atol=2e-5, err_msg=name)
