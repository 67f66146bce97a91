"""python -m tinygrad_gpt.finetune classify|instruct, python -m tinygrad_gpt.classify and
sample --instruction, end to end on a tiny GPT-2-layout base (our own save_pretrained and a
byte-level BPE with <|endoftext|>, so no download and no transformers needed): what each
writes, which parameters each --trainable changes, bit-exact resume, LoRA export, and the
one-line errors.
"""
import json

import numpy as np
import pytest

import tensor
from gpt import GPT, GPTConfig
from tinygrad_gpt import checkpoint, classify, finetune, sample
from tinygrad_gpt.finetune_data import format_prompt
from tokenizer import BPETokenizer

TEXT = ("the cat sat on the mat. the dog ran in the park. a good day, a bad day. "
        "to be or not to be, that is the question. ") * 4
WORDS = {"pos": ["good", "happy", "fine", "great", "nice"],
         "neg": ["bad", "sad", "awful", "poor", "grim"]}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A random tiny GPT-2 folder: config.json, model.safetensors, vocab.json, merges.txt."""
    folder = tmp_path_factory.mktemp("base")
    tok = BPETokenizer.train(TEXT + format_prompt("Name an animal.", "good") * 4, 400)
    tensor.manual_seed(0)
    GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=128, n_layer=2, n_head=2,
                  n_embd=16, bias=True)).save_pretrained(folder)
    tok.save(folder)
    return folder


@pytest.fixture(scope="module")
def labeled(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "reviews.csv"
    rows = ["text,label"]
    for k in range(60):
        label = "pos" if k % 2 else "neg"
        words = rng.choice(WORDS[label], 3)
        rows.append(f"\"the day was {' and '.join(words)}\",{label}")
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def instructions(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "alpaca.json"
    items = [{"instruction": "Say the opposite word.", "input": w, "output": o}
             for w, o in [("good", "bad"), ("bad", "good"), ("happy", "sad"), ("sad", "happy"),
                          ("fine", "poor"), ("poor", "fine"), ("great", "awful"),
                          ("awful", "great"), ("nice", "grim"), ("grim", "nice")] * 3]
    items += [{"instruction": "Name an animal.", "input": "", "output": "the cat"}] * 6
    path.write_text(json.dumps(items))
    return path


def run(argv):
    return finetune.main(argv)


def weights(out_dir):
    return checkpoint.load(out_dir)[1]


def classify_args(base, data, out, *extra, **settings):
    """The classify command line; settings override the small defaults below."""
    chosen = {"batch_size": 4, "max_iters": 6, "eval_interval": 3, "learning_rate": 1e-3,
              **settings}
    flags = [a for k, v in chosen.items() for a in (f"--{k}", str(v))]
    return ["classify", "--init_from", str(base), "--data", str(data), "--out_dir", str(out),
            *flags, *extra]


def test_classify_writes_metrics_results_and_a_checkpoint(base, labeled, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(classify_args(base, labeled, out)) == 0
    text = capsys.readouterr().out
    assert "test: accuracy" in text and "confusion matrix" in text
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "val_acc" in r]
    assert [r["iter"] for r in evals] == [0, 3, 6]             # the base first
    assert all(0 <= r["val_acc"] <= 1 and r["train_loss"] > 0 for r in evals)
    results = json.loads((out / "results.json").read_text())
    assert results["labels"] == ["neg", "pos"]
    confusion = np.array(results["confusion"])
    assert confusion.shape == (2, 2) and confusion.sum() > 0
    assert results["test_accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum())
    info = json.loads((out / "ckpt.json").read_text())
    assert info["iter"] == 6 and info["mode"] == "classify" and info["labels"] == ["neg", "pos"]


@pytest.mark.parametrize("trainable, changed", [
    ("head", {"head.weight"}),
    ("last_block", None),             # head, the last block, ln_final: checked below
    ("all", "all"),
])
def test_trainable_changes_only_its_part(base, labeled, tmp_path, trainable, changed):
    out = tmp_path / trainable
    assert run(classify_args(base, labeled, out, "--trainable", trainable, max_iters=2,
                             eval_interval=2)) == 0
    start = GPT.from_pretrained(base).state_dict()
    after = weights(out)
    moved = {k for k, v in after.items()
             if k == "head.weight" or not np.array_equal(v, start[k.removeprefix("gpt.")])}
    if changed == "all":
        assert len(moved) == len(after)
    elif changed is None:
        assert moved == {k for k in after if k == "head.weight" or k.startswith(
            ("gpt.blocks.1.", "gpt.ln_final."))}
    else:
        assert moved == changed


def test_resume_continues_bit_exactly(base, labeled, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert run(classify_args(base, labeled, straight, dropout=0.1, eval_interval=2)) == 0
    assert run(classify_args(base, labeled, split, dropout=0.1, eval_interval=2,
                             max_iters=4)) == 0
    assert checkpoint.last_iter(split) == 4
    assert run(classify_args(base, labeled, split, "--resume", dropout=0.1,
                             eval_interval=2)) == 0
    a, b = weights(straight), weights(split)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_the_classify_command_labels_texts(base, labeled, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(classify_args(base, labeled, out)) == 0
    capsys.readouterr()
    assert classify.main(["--out_dir", str(out), "--text", "the day was good"]) == 0
    label, prob, text = capsys.readouterr().out.strip().split("\t")
    assert label in ("neg", "pos") and 0.5 <= float(prob) <= 1 and text == "the day was good"


def test_lora_trains_only_adapters_and_the_head_and_exports(base, labeled, tmp_path):
    out, hf_dir = tmp_path / "lora", tmp_path / "hf"
    assert run(classify_args(base, labeled, out, "--trainable", "lora", "--lora_rank", "2",
                             "--export_hf", str(hf_dir))) == 0
    start = GPT.from_pretrained(base).state_dict()
    after = weights(out)
    moved = {k for k, v in after.items() if k.removeprefix("gpt.") not in start
             or not np.array_equal(v, start[k.removeprefix("gpt.")])}
    assert moved and all("lora_" in k or k == "head.weight" for k in moved)
    assert (hf_dir / "config.json").is_file() and (hf_dir / "vocab.json").is_file()
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    model, tok, labels = classify.load_classifier(out, "cpu")
    ids = tok.encode_ordinary("the day was good")
    ours = model(np.asarray([ids]), np.asarray([len(ids) - 1]))[0].data
    theirs = transformers.GPT2ForSequenceClassification.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        logits = theirs(torch.tensor([ids])).logits.numpy()
    np.testing.assert_allclose(logits, ours, rtol=1e-4, atol=1e-5)


def test_instruct_masks_the_prompt_writes_responses_and_samples(base, instructions, tmp_path,
                                                                 capsys):
    out = tmp_path / "instruct"
    assert run(["instruct", "--init_from", str(base), "--data", str(instructions), "--out_dir",
                str(out), "--batch_size", "4", "--max_iters", "4", "--learning_rate", "1e-3",
                "--responses", "2", "--max_new_tokens", "5"]) == 0
    responses = (out / "responses.md").read_text()
    assert responses.count("**Base:**") == 2 and responses.count("**Fine-tuned:**") == 2
    capsys.readouterr()
    assert sample.main(["--out_dir", str(out), "--instruction", "Say the opposite word.",
                        "--input", "good", "--num_samples", "1", "--max_new_tokens", "5",
                        "--temperature", "0"]) == 0
    text = capsys.readouterr().out
    assert "### Response:\n" in text and "<|endoftext|>" not in text


@pytest.mark.parametrize("argv, message", [
    (["translate"], "unknown task"),
    (["classify", "--epochz", "2"], "did you mean --epochs"),
    (["classify", "--batch_size", "0"], "--batch_size must be a positive integer"),
    (["classify", "--batch_size", "two"], "--batch_size expects int"),
    (["classify", "--trainable", "some"], "--trainable must be one of"),
    (["instruct", "--trainable", "head"], "is for classify"),
    (["classify", "--epochs", "1", "--epochs", "2"], "given twice"),
    (["classify", "--init_from", "/nonexistent/base"], "no such folder"),
])
def test_bad_settings_are_one_line_and_exit_2(argv, message, tmp_path, capsys):
    out = tmp_path / "never"
    assert finetune.main(argv + ["--out_dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_bad_data_and_context_are_refused_before_writing(base, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("text,category\nhello,x\n")
    for extra, message in (((("--data", str(bad))), "label"),
                           (("--max_length", "200"), "longer than the model's context")):
        out = tmp_path / "never"
        assert finetune.main(["classify", "--init_from", str(base), "--out_dir", str(out),
                              *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
        assert not out.exists()


def test_instruct_resumes_bit_exactly_and_exports_the_merged_lm(base, instructions, tmp_path):
    common = ["instruct", "--init_from", str(base), "--data", str(instructions), "--batch_size",
              "4", "--learning_rate", "1e-3", "--responses", "0", "--trainable", "lora",
              "--lora_rank", "2", "--dropout", "0.1", "--eval_interval", "2"]
    straight, split, exported = tmp_path / "a", tmp_path / "b", tmp_path / "hf"
    assert run(common + ["--out_dir", str(straight), "--max_iters", "4",
                         "--export_hf", str(exported)]) == 0
    assert run(common + ["--out_dir", str(split), "--max_iters", "2"]) == 0
    assert run(common + ["--out_dir", str(split), "--max_iters", "4", "--resume"]) == 0
    a, b = weights(straight), weights(split)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    lora_model, _ = sample.load_run(straight, "cpu")                  # adapters merged on load
    lora_model.eval()                                                  # (it trained with dropout)
    ids = np.array([[3, 1, 4, 1, 5]])
    np.testing.assert_allclose(GPT.from_pretrained(exported)(ids)[0].data,
                               lora_model(ids)[0].data, rtol=1e-5, atol=1e-6)


def test_the_train_estimate_samples_the_whole_split_not_its_first_items():
    """A file sorted by label must not make the train accuracy the first class's share."""
    from tinygrad_gpt.finetune_batches import Batches
    from tinygrad_gpt.finetune_task import Task

    class Items(Batches):
        def collate(self, indices):
            return np.asarray(indices)
    batches = Items(1000, 8, seed=0)
    seen = np.concatenate(list(Task.eval_batches(None, batches, limit=5)))
    assert len(seen) == 40 == len(set(seen.tolist()))
    assert seen.min() < 250 and seen.max() > 750                  # spread over the split
    assert np.array_equal(seen, np.concatenate(list(Task.eval_batches(None, batches, 5))))
    whole = np.concatenate(list(Task.eval_batches(None, batches)))
    assert np.array_equal(whole, np.arange(1000))


def test_classify_reads_a_file_of_texts_and_refuses_bad_ones(base, labeled, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(classify_args(base, labeled, out, max_iters=2, eval_interval=2)) == 0
    texts = tmp_path / "texts.txt"
    texts.write_text("the day was good\n\nthe day was awful and grim\n")
    capsys.readouterr()
    assert classify.main(["--out_dir", str(out), "--file", str(texts)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[2] for line in lines] == ["the day was good",
                                                      "the day was awful and grim"]
    texts.write_bytes(b"\xff\xfe bad")
    assert classify.main(["--out_dir", str(out), "--file", str(texts)]) == 2
    assert "UTF-8" in capsys.readouterr().err
    assert classify.main(["--out_dir", str(tmp_path / "none"), "--text", "hi"]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_ctrl_c_saves_a_checkpoint_that_resumes(base, labeled, tmp_path, monkeypatch, capsys):
    """A real SIGINT in the middle of step 2: the step finishes, a checkpoint is saved at
    step 2, exit 130; --resume then finishes the run."""
    import os
    import signal
    from tinygrad_gpt.classify import ClassifyTask
    real = ClassifyTask.loss

    def interrupted_in_step_two(self, model, batch):
        self.steps = getattr(self, "steps", 0) + 1
        if self.steps == 2:
            os.kill(os.getpid(), signal.SIGINT)          # as Ctrl-C would
        return real(self, model, batch)
    monkeypatch.setattr(ClassifyTask, "loss", interrupted_in_step_two)
    out = tmp_path / "run"
    assert run(classify_args(base, labeled, out, eval_interval=100)) == 130
    assert checkpoint.last_iter(out) == 2 and "--resume" in capsys.readouterr().out
    monkeypatch.setattr(ClassifyTask, "loss", real)
    assert run(classify_args(base, labeled, out, "--resume", eval_interval=100)) == 0
    assert checkpoint.last_iter(out) == 6


def test_a_nan_loss_stops_and_keeps_the_last_checkpoint(base, labeled, tmp_path, monkeypatch,
                                                       capsys):
    from tinygrad_gpt.classify import ClassifyTask
    real = ClassifyTask.loss

    def nan_after_three(self, model, batch):
        loss = real(self, model, batch)
        self.steps = getattr(self, "steps", 0) + 1
        return loss * float("nan") if self.steps > 3 else loss
    monkeypatch.setattr(ClassifyTask, "loss", nan_after_three)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as stop:
        run(classify_args(base, labeled, out, eval_interval=2))
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert "became nan at step 3" in err and "step 2" in err and "intact" in err
    assert checkpoint.last_iter(out) == 2
