"""Continued pretraining: train --init_from PATH, PATH a Hugging Face GPT-2 folder (written by
transformers, when installed, or by gpt.hf.save_pretrained) or one of our runs; the model
pieces it needs (crop_block_size, hidden_states, GPTConfig.num_parameters); the loader
tinygrad_gpt.pretrained; data.prepare with a given tokenizer."""
import json
import shutil

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from safetensors.numpy import load_file, save_file

import gpt.hf
import tensor
import tensor.fast
import tensor.functional as F
from gpt import GPT, GPTConfig
from gpt.hf import config_to_hf, from_hf_state_dict, to_hf_state_dict
from tensor import no_grad
from test_hf import numpy_gpt2
from test_train import metrics, run
from tinygrad_gpt import checkpoint, data, memory, pretrained, tokenizer_io, train
from tinygrad_gpt.checkpoint import load
from tinygrad_gpt.cli import UserError
from tinygrad_gpt.settings import TrainConfig
from tokenizer import BPETokenizer

TEXT = "".join(f"SPEAKER {i % 7}:\nO what a rogue and peasant slave am I, line {i}!\n\n"
               for i in range(120))
SHAPE = dict(block_size=64, n_layer=2, n_head=2, n_embd=16)      # the bases' GPT-2 shape
RUN = ["--max_iters=3", "--eval_interval=3", "--eval_iters=2", "--batch_size=2",
       "--sample_tokens=0", "--log_interval=1"]


@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer.train(TEXT, vocab_size=300)        # <|endoftext|> is its last id


def perturbed_gpt(vocab_size, bias=True, seed=0):
    """A seeded GPT with weights of order one, so its losses differ clearly from uniform."""
    tensor.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=vocab_size, **SHAPE, bias=bias))
    rng = np.random.default_rng(seed)
    for p in model.parameters():
        p.data[...] += (rng.standard_normal(p.shape) * 0.2).astype(np.float32)
    return model


@pytest.fixture(scope="module")
def ours(tmp_path_factory, bpe):
    """A GPT-2 folder written without transformers: gpt.hf.save_pretrained + our tokenizer."""
    folder = tmp_path_factory.mktemp("ours")
    perturbed_gpt(bpe.vocab_size).save_pretrained(folder)
    tokenizer_io.save(bpe, folder)
    return folder


@pytest.fixture(scope="module")
def hf_gpt2(tmp_path_factory, bpe):
    """A small random GPT-2 written by transformers itself, with our tokenizer's files."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=bpe.vocab_size, n_positions=64, n_embd=16, n_layer=2, n_head=2,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation="eager")
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    folder = tmp_path_factory.mktemp("hf")
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer_io.save(bpe, folder)
    return folder, model, torch


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYGRAD_GPT_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "small.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def first_eval(out_dir):
    return next(r for r in metrics(out_dir) if "val_loss" in r)


def eval_batches(dataset, cfg, it=0):
    """The batches train.evaluate draws at iteration it: {split: [(x, y) (B, T) each]}."""
    batches = {}
    for k, split in enumerate(("train", "val")):
        rng = np.random.default_rng([cfg["seed"], it, k])
        batches[split] = [data.get_batch(getattr(dataset, split), cfg["block_size"],
                                         cfg["batch_size"], rng) for _ in range(cfg["eval_iters"])]
    return batches


def reference_losses(state, dataset, cfg):
    """Mean cross-entropy of test_hf's float64 NumPy GPT-2 (on the file's own tensors) over
    train.evaluate's batches: an independent check of what --init_from loaded."""
    losses = {}
    for split, batches in eval_batches(dataset, cfg).items():
        total = 0.0
        for x, y in batches:
            logits = numpy_gpt2(state, cfg["n_head"], x)                       # (B, T, V)
            logits = logits - logits.max(-1, keepdims=True)
            logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
            total += -np.take_along_axis(logp, y[..., None], -1).mean()
        losses[split] = total / len(batches)
    return losses


# ----- continued pretraining from a GPT-2 folder -------------------------------------------
def test_a_transformers_folder_trains_from_its_own_loss(corpus, tmp_path, hf_gpt2, bpe):
    folder, hf_model, torch = hf_gpt2
    out = tmp_path / "run"
    run([f"--data={corpus}", f"--init_from={folder}", f"--out_dir={out}", *RUN])
    info, weights, _ = load(out)
    cfg = info["train_config"]
    assert {k: cfg[k] for k in SHAPE} == SHAPE and cfg["bias"] is True
    assert (cfg["tokenizer"], cfg["vocab_size"], cfg["init_from"]) == ("bpe", 300, str(folder))
    assert info["iter"] == 3 and info["optimizer_t"] == 3            # a fresh optimizer
    assert info["base"]["kind"] == "hf" and weights["position_embedding.weight"].shape == (64, 16)
    tok = tokenizer_io.load(out / "tokenizer")
    assert tokenizer_io.identity(tok) == tokenizer_io.identity(bpe)
    dataset = data.prepare(str(corpus), tok)                     # the run's cached token ids
    first = first_eval(out)
    assert first["iter"] == 0
    for split, batches in eval_batches(dataset, cfg).items():
        losses = []
        with torch.no_grad():
            for x, y in batches:
                logits = hf_model(torch.tensor(x)).logits                      # (B, T, V)
                losses.append(torch.nn.functional.cross_entropy(
                    logits.reshape(-1, 300), torch.tensor(y).reshape(-1)).item())
        assert first[f"{split}_loss"] == pytest.approx(np.mean(losses), rel=1e-5), split


@pytest.mark.parametrize("block_size", [None, 32])
def test_our_folder_trains_from_its_own_loss_and_a_smaller_block_crops(corpus, tmp_path, ours,
                                                                       block_size, capsys):
    out = tmp_path / "run"
    crop = [f"--block_size={block_size}"] if block_size else []
    run([f"--data={corpus}", f"--init_from={ours}", f"--out_dir={out}", *RUN, *crop])
    printed = capsys.readouterr().out
    assert "init_from:" in printed and ("cropped to 32" in printed) == bool(block_size)
    info, weights, _ = load(out)
    cfg = info["train_config"]
    T = block_size or 64
    assert cfg["block_size"] == info["model_config"]["block_size"] == T
    assert weights["position_embedding.weight"].shape == (T, 16)
    first = first_eval(out)
    state = load_file(str(ours / "model.safetensors"))
    expected = reference_losses(state, data.prepare(str(corpus), tokenizer_io.load(ours)), cfg)
    for split in ("train", "val"):
        assert first[f"{split}_loss"] == pytest.approx(expected[split], rel=1e-4), split


def test_a_folder_without_biases_trains_as_a_bias_free_model(corpus, tmp_path, bpe):
    model = perturbed_gpt(bpe.vocab_size, bias=False, seed=1)
    folder = tmp_path / "nobias"
    folder.mkdir()
    hf = to_hf_state_dict(model.state_dict(), model.config.n_layer)
    state = {k: v for k, v in hf.items() if not k.endswith(".bias")}        # nanoGPT's layout
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config_to_hf(model.config)))
    tokenizer_io.save(bpe, folder)
    out = tmp_path / "run"
    run([f"--data={corpus}", f"--init_from={folder}", f"--out_dir={out}", *RUN])
    info, weights, _ = load(out)
    assert info["train_config"]["bias"] is False and info["model_config"]["bias"] is False
    assert not [k for k in weights if k.endswith("bias")]
    dataset = data.prepare(str(corpus), bpe)
    expected = reference_losses(hf, dataset, info["train_config"])           # zero biases
    assert first_eval(out)["val_loss"] == pytest.approx(expected["val"], rel=1e-4)
    assert train.main([f"--data={corpus}", f"--init_from={folder}", "--bias=true",
                       f"--out_dir={tmp_path / 'again'}", *RUN]) == 2


# ----- one of our runs as the base, and resume ---------------------------------------------
@pytest.mark.parametrize("model", ["gpt", "bigram"])
def test_a_training_run_is_a_base_too(corpus, tmp_path, model, capsys):
    base = tmp_path / "base"
    run([f"--data={corpus}", f"--out_dir={base}", f"--model={model}", "--n_layer=1",
         "--n_head=2", "--n_embd=16", "--block_size=16", "--max_iters=4", "--eval_interval=4",
         "--eval_iters=1", "--batch_size=4", "--sample_tokens=0"])
    extra = tmp_path / "extra.txt"                      # "§" is not in the base's characters
    extra.write_text(TEXT + "§ and § again\n" * 3, encoding="utf-8")
    out = tmp_path / "ft"
    run([f"--data={extra}", f"--init_from={base}", f"--out_dir={out}", "--block_size=8", *RUN])
    assert "6 characters of the text are not in the tokenizer's vocabulary" in \
        capsys.readouterr().out
    info = load(out)[0]
    cfg = info["train_config"]
    assert (cfg["model"], cfg["n_layer"], cfg["n_embd"], cfg["bias"]) == (model, 1, 16, False)
    assert (cfg["tokenizer"], cfg["block_size"], info["base"]["kind"]) == ("char", 8, "run")
    assert info["optimizer_t"] == 3 and load(base)[0]["optimizer_t"] == 4    # fresh state
    start, tok, _ = pretrained.load_base(base, block_size=8)
    trained = load(base)[1]                           # the base run's final weights
    assert sorted(start.state_dict()) == sorted(trained)
    for name, array in start.state_dict().items():
        rows = trained[name][:8] if name == "position_embedding.weight" else trained[name]
        np.testing.assert_array_equal(array, rows, err_msg=name)
    dataset = data.prepare(str(extra), tok)
    with tensor.fast.on():                         # the kernels train ran: the same bits
        expected = train.evaluate(start, dataset, TrainConfig(**cfg), 0)
    first = first_eval(out)
    assert (first["train_loss"], first["val_loss"]) == (expected["train"], expected["val"])


def test_resume_continues_the_run_without_reading_the_base_again(corpus, tmp_path, ours,
                                                                 capsys):
    base = shutil.copytree(ours, tmp_path / "base")
    common = [f"--data={corpus}", f"--init_from={base}", "--eval_interval=3", "--dropout=0.1",
              "--eval_iters=2", "--batch_size=2", "--sample_tokens=4", "--log_interval=1",
              "--block_size=32"]
    run([*common, f"--out_dir={tmp_path / 'full'}", "--max_iters=6"])
    run([*common, f"--out_dir={tmp_path / 'split'}", "--max_iters=3"])
    base.rename(tmp_path / "moved")                        # the base is gone: not needed
    capsys.readouterr()
    run(["--resume", f"--out_dir={tmp_path / 'split'}", "--max_iters=6"])
    assert "init_from:" not in capsys.readouterr().out
    steps = lambda d: {r["iter"]: r["loss"] for r in metrics(d) if "loss" in r}  # noqa: E731
    evals = lambda d: [r for r in metrics(d) if "val_loss" in r]                 # noqa: E731
    assert sorted(steps(tmp_path / "split")) == list(range(6))
    assert steps(tmp_path / "split") == steps(tmp_path / "full")          # bit for bit
    assert evals(tmp_path / "split") == evals(tmp_path / "full")
    assert (tmp_path / "split" / "samples.txt").read_text() == \
        (tmp_path / "full" / "samples.txt").read_text()
    code = train.main(["--resume", f"--out_dir={tmp_path / 'split'}",
                       f"--init_from={tmp_path / 'moved'}", "--max_iters=7"])
    assert code == 2 and "--init_from" in capsys.readouterr().err


# ----- the fine-tuning preset --------------------------------------------------------------
def test_the_finetune_shakespeare_preset_trains_the_base_with_nanogpts_settings(
        corpus, tmp_path, ours, capsys):
    out = tmp_path / "ft"
    args = ["--preset=finetune-shakespeare", f"--data={corpus}", f"--out_dir={out}",
            "--max_iters=2", "--eval_interval=2", "--eval_iters=1", "--sample_tokens=0",
            "--block_size=16"]
    assert train.main(args) == 2
    assert "add --init_from" in capsys.readouterr().err and not out.exists()
    run([*args, f"--init_from={ours}"])
    cfg = load(out)[0]["train_config"]
    assert (cfg["learning_rate"], cfg["decay_lr"], cfg["dropout"], cfg["beta2"]) == \
        (3e-5, False, 0.1, 0.95)
    assert (cfg["batch_size"], cfg["gradient_accumulation_steps"]) == (1, 32)
    assert (cfg["n_layer"], cfg["n_embd"], cfg["bias"], cfg["vocab_size"]) == (2, 16, True, 300)
    assert [r["lr"] for r in metrics(out) if "lr" in r] == [3e-5, 3e-5]      # constant


# ----- bad input: one line, exit 2, nothing written ----------------------------------------
@pytest.mark.parametrize("flags,named", [
    (["--n_layer=3"], "--n_layer 3 (the base has 2)"),
    (["--n_head=4"], "--n_head 4 (the base has 2)"),
    (["--n_embd=32"], "--n_embd 32 (the base has 16)"),
    (["--bias=false"], "--bias False (the base has True)"),
    (["--tokenizer=char"], "--tokenizer char (the base has bpe)"),
    (["--vocab_size=512"], "--vocab_size 512 (the base has 300)"),
    (["--model=bigram"], "--model bigram (the base has gpt)"),
    (["--block_size=65"], "--block_size 65 (the base has at most 64)"),
    (["--preset=shakespeare-char-cpu"],
     "--n_layer 4, from --preset shakespeare-char-cpu (the base has 2)"),
])
def test_a_setting_that_contradicts_the_base_is_named(corpus, tmp_path, ours, flags, named,
                                                      capsys):
    out = tmp_path / "run"
    code = train.main([f"--data={corpus}", f"--init_from={ours}", f"--out_dir={out}", *flags])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert named in err and "contradict" in err
    assert not out.exists()


def broken_folders(root, ours):
    """name -> (folder, words the error must contain)."""
    cases = {"missing": (root / "nowhere", "no such folder"),
             "empty": (root / "empty", "neither a Hugging Face GPT-2 folder")}
    (root / "empty").mkdir()

    def copy(name, change):
        folder = shutil.copytree(ours, root / name)
        change(folder)
        return folder

    config = json.loads((ours / "config.json").read_text())
    cases["no tokenizer"] = (copy("notok", lambda f: (f / "vocab.json").unlink()),
                             "no vocab.json + merges.txt")
    cases["no weights"] = (copy("noweights", lambda f: (f / "model.safetensors").unlink()),
                           "model.safetensors not found")
    cases["bad json"] = (copy("badjson", lambda f: (f / "config.json").write_text("{")),
                         "is not a GPT-2 config")
    cases["mis-shaped"] = (copy("shape", lambda f: (f / "config.json").write_text(json.dumps(
        {**config, "n_embd": 24}))), "wrong shape: wte.weight (300, 16) where config.json needs "
                               "(300, 24), wpe.weight (64, 16) where config.json needs (64, 24)")
    cases["deeper"] = (copy("deeper", lambda f: (f / "config.json").write_text(json.dumps(
        {**config, "n_layer": 3}))), "does not fit config.json: missing h.2.ln_1.weight")
    cases["fewer rows"] = (copy("rows", lambda f: (f / "config.json").write_text(json.dumps(
        {**config, "vocab_size": 200}))), "wte.weight (300, 16) where config.json needs (200, 16)")
    cases["small vocab"] = (copy("vocab", lambda f: perturbed_gpt(200).save_pretrained(f)),
                            "tokenizer has 300 tokens but the model only 200")
    cases["torn weights"] = (copy("torn", lambda f: (f / "model.safetensors").write_bytes(
        (ours / "model.safetensors").read_bytes()[:-100])), "model.safetensors")
    return cases


@pytest.mark.parametrize("case", ["missing", "empty", "no tokenizer", "no weights", "bad json",
                                  "mis-shaped", "deeper", "fewer rows", "small vocab",
                                  "torn weights"])
def test_a_bad_base_folder_is_one_line_and_nothing_is_written(corpus, tmp_path, ours, case,
                                                              capsys):
    folder, words = broken_folders(tmp_path, ours)[case]
    out = tmp_path / "run"
    code = train.main([f"--data={corpus}", f"--init_from={folder}", f"--out_dir={out}", *RUN])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --init_from") and err.count("\n") == 1, err
    assert words in err
    assert not out.exists() or not any(out.iterdir())


def test_out_dir_may_not_be_the_base(corpus, ours, capsys):
    assert train.main([f"--data={corpus}", f"--init_from={ours}", f"--out_dir={ours}"]) == 2
    assert "is the --init_from folder" in capsys.readouterr().err


def test_the_memory_estimate_is_checked_before_the_weights_are_read(corpus, tmp_path, ours,
                                                                    monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise AssertionError("weights read before the memory check")
    monkeypatch.setattr(gpt.hf, "load_file", refuse)
    monkeypatch.setattr(checkpoint, "load_file", refuse)
    monkeypatch.setattr(memory, "available", lambda device: 1)
    code = train.main([f"--data={corpus}", f"--init_from={ours}",
                       f"--out_dir={tmp_path / 'run'}", *RUN])
    assert code == 2 and "needs about" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()                  # refused: nothing written


# ----- tinygrad_gpt.pretrained -------------------------------------------------------------
def test_load_base_gives_the_folders_weights_and_tokenizer(ours, bpe):
    model, tok, base = pretrained.load_base(ours)
    expected = from_hf_state_dict(load_file(str(ours / "model.safetensors")))
    assert sorted(model.state_dict()) == sorted(expected)
    for name, array in model.state_dict().items():
        np.testing.assert_array_equal(array, expected[name], err_msg=name)
    assert (base.kind, base.model, base.tokenizer_kind) == ("hf", "gpt", "bpe")
    assert base.config == GPTConfig(vocab_size=300, **SHAPE, dropout=0.0, bias=True)
    assert tokenizer_io.identity(tok) == tokenizer_io.identity(bpe)
    model = pretrained.load_base(ours, block_size=16, dropout=0.1, dtype="float64")[0]
    assert (model.config.block_size, model.config.dropout) == (16, 0.1)
    positions = model.position_embedding.weight.data                         # (16, C)
    assert positions.dtype == np.float64 and positions.shape == (16, 16)
    np.testing.assert_array_equal(positions, expected["position_embedding.weight"][:16])
    with pytest.raises(UserError, match="--block_size 65 is longer than the 64 positions"):
        pretrained.load_base(ours, block_size=65)


# ----- the model: crop_block_size, hidden_states, num_parameters ---------------------------
def small_gpt(block_size=8):
    tensor.manual_seed(3)
    return GPT(GPTConfig(vocab_size=11, block_size=block_size, n_layer=1, n_head=2, n_embd=8))


IDS = np.random.default_rng(5).integers(0, 11, size=(2, 5))


def test_crop_block_size_keeps_the_first_positions_and_their_logits():
    model = small_gpt()
    positions = model.position_embedding.weight.data.copy()                  # (8, C)
    with no_grad():
        before = model(IDS)[0].data
    assert model.crop_block_size(5) is model
    assert model.config.block_size == 5 and model.position_embedding.weight.shape == (5, 8)
    np.testing.assert_array_equal(model.position_embedding.weight.data, positions[:5])
    with no_grad():
        np.testing.assert_array_equal(model(IDS)[0].data, before)
    _, loss = model(IDS, IDS)
    loss.backward()
    assert model.position_embedding.weight.grad.shape == (5, 8)
    assert model.generate(IDS[:, :4], 3, temperature=0).shape == (2, 7)     # context cropped
    with pytest.raises(ValueError, match="longer than block_size 5"):
        model(np.zeros((1, 6), np.int64))
    for bad in (6, 0, True, 2.0):
        with pytest.raises(ValueError, match="crop_block_size"):
            model.crop_block_size(bad)


def test_hidden_states_are_what_the_lm_head_reads():
    model = small_gpt()
    hidden = model.hidden_states(IDS)
    assert hidden.shape == (2, 5, 8)                                          # (B, T, C)
    logits, loss = model(IDS, IDS)
    np.testing.assert_array_equal(logits.data, F.linear(hidden, model.token_embedding.weight).data)
    np.testing.assert_array_equal(model(IDS, last_only=True)[0].data, logits.data[:, -1:])
    np.testing.assert_array_equal(loss.data, F.cross_entropy(logits, IDS).data)
    caches = model.new_caches()
    with no_grad():
        model.hidden_states(IDS[:, :3], caches)
        step = model.hidden_states(IDS[:, 3:], caches)                      # (B, 2, C)
    np.testing.assert_allclose(step.data, hidden.data[:, 3:], rtol=1e-5, atol=1e-6)


@given(n_layer=st.integers(1, 3), n_head=st.integers(1, 3), head_size=st.integers(1, 4),
       vocab_size=st.integers(1, 20), block_size=st.integers(1, 10), bias=st.booleans())
def test_num_parameters_counts_what_gpt_builds(n_layer, n_head, head_size, vocab_size,
                                               block_size, bias):
    config = GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer,
                       n_head=n_head, n_embd=n_head * head_size, bias=bias)
    assert config.num_parameters() == GPT(config).num_parameters()


# ----- data.prepare with a given tokenizer -------------------------------------------------
def test_a_given_tokenizer_is_used_as_it_is_and_keys_the_cache(tmp_path, bpe):
    path = tmp_path / "t.txt"
    path.write_text(TEXT, encoding="utf-8")
    cache = tmp_path / "cache"
    ds = data.prepare(str(path), bpe, cache=cache)
    split = int(len(TEXT) * data.TRAIN_FRACTION)
    assert ds.tokenizer is bpe and ds.meta["fitted"] is False
    assert bpe.decode(ds.train.tolist()) == TEXT[:split]
    assert bpe.decode(ds.val.tolist()) == TEXT[split:]
    tokenizer_io.save(bpe, tmp_path / "copy")                  # the same tokenizer, re-read
    assert data.prepare(str(path), tokenizer_io.load(tmp_path / "copy"), cache=cache).folder \
        == ds.folder
    other = BPETokenizer.train(TEXT, vocab_size=280)
    assert data.prepare(str(path), other, cache=cache).folder != ds.folder
    assert data.prepare(str(path), "bpe", 300, cache=cache).folder != ds.folder


def test_the_identity_changes_with_anything_that_changes_encoding(bpe):
    same = BPETokenizer(bpe.vocab, bpe.merges, bpe.pattern, bpe.special_tokens)
    assert tokenizer_io.identity(same) == tokenizer_io.identity(bpe)
    fewer = dict(list(bpe.merges.items())[:-1])
    vocab = {i: t for i, t in bpe.vocab.items() if i != list(bpe.merges.values())[-1]}
    changed = [BPETokenizer(vocab, fewer, bpe.pattern, bpe.special_tokens),
               BPETokenizer(bpe.vocab, bpe.merges, "gpt4", bpe.special_tokens),
               BPETokenizer(bpe.vocab, bpe.merges, bpe.pattern, {"<|end|>": 299})]
    assert len({tokenizer_io.identity(t) for t in [bpe, *changed]}) == 4
