"""python -m tinygrad_gpt.train --lora_rank R [--export_hf DIR]: only the adapters train,
the base weights stay bit for bit, the run resumes, and the exported folder is a plain GPT-2
(our from_pretrained, and transformers when installed) with the merged weights' logits."""
import numpy as np
import pytest

from gpt import GPT
from test_init_from import RUN, bpe, corpus, ours  # noqa: F401  (fixtures)
from tinygrad_gpt import checkpoint, sample, train


def test_lora_trains_only_adapters_and_exports_a_merged_gpt2(corpus, ours, tmp_path):  # noqa: F811
    out, exported = tmp_path / "run", tmp_path / "hf"
    assert train.main([f"--data={corpus}", f"--init_from={ours}", f"--out_dir={out}", *RUN,
                       "--lora_rank=2", "--lora_targets=attn", "--learning_rate=1e-2",
                       f"--export_hf={exported}"]) == 0
    base = GPT.from_pretrained(ours).state_dict()
    info, weights, optim = checkpoint.load(out)
    assert info["lora"] == {"rank": 2, "alpha": 16.0, "targets": ["attn"]}
    adapters = {k for k in weights if ".lora_" in k}
    assert adapters and all(".attn." in k for k in adapters)
    assert all(np.array_equal(weights[k], base[k]) for k in weights if k not in adapters)
    assert any(np.abs(weights[k]).max() > 0 for k in adapters if k.endswith("lora_B"))
    assert optim["m"].size == sum(weights[k].size for k in adapters)   # state: adapters only
    merged = GPT.from_pretrained(exported)
    ids = np.array([[1, 5, 9, 2, 7]])
    lora_model, _ = sample.load_run(out, "cpu")                         # merged on load
    np.testing.assert_allclose(merged(ids)[0].data, lora_model(ids)[0].data, rtol=1e-5,
                               atol=1e-6)
    assert not np.allclose(merged(ids)[0].data, GPT.from_pretrained(ours)(ids)[0].data)
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    hf = transformers.GPT2LMHeadModel.from_pretrained(exported).eval()
    with torch.no_grad():
        theirs = hf(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(theirs, merged(ids)[0].data, rtol=1e-4, atol=1e-5)


def test_lora_run_resumes_bit_exactly(corpus, ours, tmp_path):  # noqa: F811
    args = [f"--data={corpus}", f"--init_from={ours}", "--lora_rank=2", "--batch_size=2",
            "--eval_iters=2", "--sample_tokens=0", "--eval_interval=2", "--dropout=0.1"]
    assert train.main(args + [f"--out_dir={tmp_path / 'a'}", "--max_iters=4"]) == 0
    assert train.main(args + [f"--out_dir={tmp_path / 'b'}", "--max_iters=2"]) == 0
    assert train.main(["--resume", f"--out_dir={tmp_path / 'b'}", "--max_iters=4"]) == 0
    a, b = checkpoint.load(tmp_path / "a")[1], checkpoint.load(tmp_path / "b")[1]
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("flags, message", [
    (["--lora_rank=-1"], "--lora_rank must be >= 0"),
    (["--lora_rank=2", "--lora_targets=conv"], "--lora_targets"),
    (["--model=bigram", "--lora_rank=2"], "need --model gpt"),
])
def test_bad_lora_settings_are_one_line(corpus, tmp_path, flags, message, capsys):  # noqa: F811
    assert train.main([f"--data={corpus}", f"--out_dir={tmp_path / 'x'}", *RUN, *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
