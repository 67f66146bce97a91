"""Every CLI, property-tested (issue 16, item 2), continued: finetune classify|instruct,
classify, sample, trace, attention_maps and gradcheck, in this process (the harness is
test_cli_properties.py's), and a few real processes: argv bytes that are not UTF-8, an
argparse error.
"""
import json
import shutil
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

import strategies as S
import tensor
from gpt import GPT, GPTConfig
from runs import make_run
from test_cli_properties import (OUT_DIRS, assert_clean, cache, call, example,  # noqa: F401
                                 said, snapshot, write)
from tinygrad_gpt import attention_maps, classify, finetune, gradcheck, sample, trace
from tinygrad_gpt.finetune_data import format_prompt
from tokenizer import BPETokenizer

LABELED = "text,label\n" + "".join(f"a {'good' if k % 2 else 'bad'} day {k},"
                                   f"{'pos' if k % 2 else 'neg'}\n" for k in range(20))
INSTRUCTIONS = json.dumps([{"instruction": "Name an animal.", "input": "", "output": "the cat"},
                           {"instruction": "Say it.", "input": "good", "output": "a good day"}]
                          * 6)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Read-only: a char GPT run, a bigram run, a GPT-2 folder (BPE) and a classifier run."""
    root = tmp_path_factory.mktemp("models")
    make_run(root / "run")
    make_run(root / "bigram", model="bigram")
    tok = BPETokenizer.train("the cat sat on the mat. a good day, a bad day. " * 4
                             + format_prompt("Name an animal.", "good"), 300)
    tensor.manual_seed(0)
    GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=128, n_layer=1, n_head=2, n_embd=8,
                  bias=True)).save_pretrained(root / "base")
    tok.save(root / "base")
    (root / "task.csv").write_text(LABELED)
    assert call(finetune.main, ["classify", "--init_from", str(root / "base"), "--data",
                                str(root / "task.csv"), "--out_dir", str(root / "classifier"),
                                "--max_iters", "1", "--batch_size", "2"])[0] == 0
    return root


# ----- finetune classify|instruct ----------------------------------------------------------
# KNOWN (finetune.py is another helper's file), pinned below: a negative --seed, an
# --export_hf that cannot be written and --resume=maybe end in tracebacks, so the property
# draws seeds >= 0, writable export folders and words parse_bool knows for --resume.
SEEDS = st.one_of(st.sampled_from(["0", "1", "2.0", " 3", str(10**15), str(2**63)]), S.junk)


@st.composite
def task_files(draw, mode):
    good = (LABELED if mode == "classify" else INSTRUCTIONS).encode()
    content = draw(st.just(good) | st.sampled_from([    # the good file one time in three
        good, b"\xef\xbb\xbf" + good, good.replace(b"\n", b"\r\n"), b"", good[:40] + b"\xff",
        good.replace(b"a ", b"\0", 3), b"text,label\n", b"[]", b"{", b"\n\n\n",
        LABELED.replace("neg", "pos").encode(), b'[{"instruction": 5, "output": []}]',
        b"words,labels\nx,y\n"]) | st.binary(max_size=120))
    ext = draw(st.sampled_from([".csv", ".csv", ".tsv", ".jsonl"] if mode == "classify"
                               else [".json", ".json", ".jsonl", ".csv"]))
    return "task" + ext, content


@given(data=st.data(), mode=st.sampled_from(["classify", "instruct"]))
def test_finetune_command_lines(models, tmp_path_factory, data, mode):
    name, content = data.draw(task_files(mode), label="task file")
    values = {
        **{k: S.work_counts for k in ("max_iters", "epochs", "responses", "max_new_tokens")},
        **{k: S.counts for k in ("batch_size", "eval_interval", "max_length", "lora_rank")},
        **{k: S.reals for k in ("learning_rate", "weight_decay", "grad_clip", "dropout",
                                "lora_alpha")},
        "seed": SEEDS, "mask_prompt": S.flags, "resume": st.sampled_from(["true", "0", "no"]),
        "trainable": S.choices("head", "last_block", "all", "lora"),
        "text_column": st.one_of(st.sampled_from(["text", "label", ""]), S.ARG_TEXT),
        "label_column": st.one_of(st.sampled_from(["label", "text", ""]), S.ARG_TEXT),
        "lora_targets": st.sampled_from(["attn", "mlp", "attn,mlp", ",", "", "x"]),
        "device": S.choices("cpu", "cuda"), "export_hf": st.sampled_from(["", "export"]),
        "init_from": st.sampled_from([str(models / "base"), str(models / "run"), "",
                                      "missing", "afile", "empty"]),
        "data": st.sampled_from([name, "missing", "afile", "empty"]), "out_dir": OUT_DIRS}
    base = {"init_from": str(models / "base"), "data": name, "out_dir": "run",
            "max_iters": "1", "batch_size": "2", "responses": "1", "max_new_tokens": "2"}
    first = data.draw(st.sampled_from(["classify", "instruct", "", "--help", "train"])
                      if data.draw(st.integers(0, 7)) == 0 else st.just(mode))
    argv = [first] + data.draw(S.command_lines(base, values, keep={"data", "max_iters",
                                                                  "responses"}), label="argv")
    with example(tmp_path_factory.getbasetemp()) as folder:
        (folder / name).write_bytes(content)
        before = snapshot(folder)
        outcome = call(finetune.main, argv)
        assert_clean(outcome, before, snapshot(folder))


def finetune_ends(models, tmp_path, *argv):
    (tmp_path / "task.csv").write_text(LABELED)
    return call(finetune.main, ["classify", "--init_from", str(models / "base"), "--data",
                                str(tmp_path / "task.csv"), "--out_dir", str(tmp_path / "run"),
                                "--max_iters", "1", "--batch_size", "2", *argv])


@pytest.mark.parametrize("argv", [["--seed", "-1"], ["--export_hf", "/dev/null/x"],
                                  ["--resume=maybe"]])
def test_finetune_refuses_before_it_runs(models, tmp_path, argv):
    code, _, lines = finetune_ends(models, tmp_path, *argv)
    assert code == 2 and len(lines) == 1 and not (tmp_path / "run").exists(), (code, lines)


# ----- classify ----------------------------------------------------------------------------
@given(data=st.data(), text=st.one_of(S.ARG_TEXT, st.just("day " * 300)),
       lines=st.binary(max_size=80))
def test_classify_values(models, tmp_path_factory, data, text, lines):
    source = data.draw(st.sampled_from(["--text", "--file"]))
    argv = [source, text if source == "--text" else data.draw(
        st.sampled_from(["lines.txt", "missing", "empty", "afile", "/dev/null"]))]
    argv += ["--out_dir", data.draw(st.sampled_from([str(models / "classifier"),
                                                     str(models / "run"), "missing", ""]))]
    argv += ["--device", data.draw(S.choices("cpu", "cuda"))]
    with example(tmp_path_factory.getbasetemp()) as folder:
        (folder / "lines.txt").write_bytes(lines)
        assert_clean(call(classify.main, argv), snapshot(folder), snapshot(folder))


@pytest.mark.parametrize("argv", [["--text", "x", "--bogus"], ["--file", ""]])
def test_classify_refuses_in_one_line(models, argv):
    code, _, lines = call(classify.main, [*argv, "--out_dir", str(models / "classifier")])
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, lines)


# ----- sample, trace, attention_maps, gradcheck ----------------------------------------------
def texts(*extra):
    return st.one_of(S.ARG_TEXT, st.sampled_from(["To be", "T", "\r\n", *extra]))


def sample_values(models):
    return {"out_dir": st.sampled_from([str(models / "run"), str(models / "classifier"),
                                        str(models / "base"), "missing", "empty", ""]),
            "init_from": st.sampled_from([str(models / "base"), str(models / "run"), "",
                                          "missing", "empty"]),
            "start": texts("FILE:c.txt", "FILE:d", "FILE:afile", "FILE:missing", "FILE:"),
            "instruction": texts(), "input": texts(), "num_samples": S.work_counts,
            "max_new_tokens": S.work_counts, "temperature": S.reals, "top_p": S.reals,
            "top_k": S.counts, "seed": S.counts, "device": S.choices("cpu", "cuda")}


@given(data=st.data(), corpus=S.corpora(block_size=8))
def test_sample_command_lines(models, tmp_path_factory, data, corpus):
    source = data.draw(st.sampled_from([{"out_dir": str(models / "run")},
                                        {"init_from": str(models / "base")},
                                        {"init_from": str(models / "base"), "instruction":
                                         "Name an animal.", "input": "good"}]))
    argv = data.draw(S.command_lines({**source, "num_samples": "1", "max_new_tokens": "3"},
                                     sample_values(models),
                                     keep={"num_samples", "max_new_tokens"}), label="argv")
    with example(tmp_path_factory.getbasetemp()) as folder:
        write(folder, corpus[1])                        # --start FILE:c.txt reads it
        before = snapshot(folder)
        assert_clean(call(sample.main, argv), before, snapshot(folder))


def test_sample_a_bigram_run(models):
    assert call(sample.main, ["--out_dir", str(models / "bigram"), "--num_samples", "1",
                              "--max_new_tokens", "3"])[0] == 0


OPS = ["softmax", "gelu", "layer_norm", "attention", "blocks.1.attn.attention", "matmul"]


@given(data=st.data())
def test_trace_command_lines(models, tmp_path_factory, data):
    values = {"text": texts("x" * 1024, "x" * 1025), "seed": S.counts, "index": S.counts,
              "composed": st.one_of(st.none(), S.flags), "op": S.choices(*OPS),
              "dot": st.sampled_from(["g.dot", "", "afile", "empty", "/dev/null/x", "no/g.dot"]),
              "out_dir": st.sampled_from([str(models / "run"), str(models / "bigram"),
                                          str(models / "classifier"), "", "missing", "empty"])}
    base = data.draw(st.sampled_from([{"text": "To be"}, {"out_dir": str(models / "run"),
                                                          "text": "To be"}]))
    argv = data.draw(S.command_lines(base, values), label="argv")
    with example(tmp_path_factory.getbasetemp()) as folder:
        before = snapshot(folder)
        assert_clean(call(trace.main, argv), before, snapshot(folder))


@given(data=st.data())
def test_attention_maps_command_lines(models, tmp_path_factory, data):
    values = {"text": texts("To be, or not to be"), "layer": S.counts, "head": S.counts,
              "format": S.choices("png", "text", "both"), "text_only": st.one_of(st.none(),
                                                                                S.flags),
              "save_dir": st.sampled_from(["pngs", "", "afile", "/dev/null/x", "empty"]),
              "out_dir": st.sampled_from(["myrun", str(models / "bigram"), "",
                                          str(models / "classifier"), "missing", "empty"])}
    base = {"out_dir": "myrun", "text": "To be", "format": "text", "layer": "0", "head": "1"}
    argv = data.draw(S.command_lines(base, values), label="argv")
    with example(tmp_path_factory.getbasetemp()) as folder:
        shutil.copytree(models / "run", folder / "myrun")   # PNGs go to RUN/attention
        before = snapshot(folder)
        assert_clean(call(attention_maps.main, argv), before, snapshot(folder))


FUNCTIONS = ["tinygrad_gpt.exercises:layer_norm", "tinygrad_gpt.exercises:layer_norm_wrong",
             "tinygrad_gpt.exercises:softmax", "math:pi", "os:getcwd", "no_such_module:f",
             "tinygrad_gpt.exercises:nope", ":", "x", "afile:f", "raises.py:f", "exits.py:f",
             "broken.py:f", "missing.py:f", "empty:f"]


def failed_a_check(code, out, lines):
    """gradcheck's documented ending for a backward (or a learner's function) that fails."""
    return code == 1 and not lines and "FAIL" in out


@given(data=st.data())
def test_gradcheck_command_lines(tmp_path_factory, data):
    values = {"op": S.choices("add", "softmax", "layer_norm", "gelu", "matmul"),
              "examples": S.work_counts, "seed": S.counts, "device": S.choices("cpu", "cuda"),
              "list": st.one_of(st.none(), S.flags), "function": st.sampled_from(FUNCTIONS)}
    argv = data.draw(S.command_lines({"op": "add", "examples": "1"}, values, keep={"op"}),
                     label="argv")
    with example(tmp_path_factory.getbasetemp()) as folder:
        (folder / "raises.py").write_text("raise RuntimeError('a learner bug')\n")
        (folder / "exits.py").write_text("import sys\nsys.exit(3)\n")
        (folder / "broken.py").write_text("def f(:\n")
        before = snapshot(folder)
        assert_clean(call(gradcheck.main, argv), before, snapshot(folder), failed_a_check)


# ----- real processes ------------------------------------------------------------------------
def process(tmp_path, *argv):
    """A CLI in a child process -> (exit code, stderr lines as said() reads them)."""
    result = subprocess.run([sys.executable, "-m", *argv], capture_output=True, cwd=tmp_path,
                            timeout=120)
    return result.returncode, said(result.stderr.decode("utf-8", "backslashreplace"))


def test_argv_bytes_that_are_not_utf8_and_argparse_errors(models, tmp_path):
    """Python hands undecodable argv bytes over as surrogates: the message shows them
    escaped, on one line; argparse's own complaints are one line too, in a real process."""
    for argv in [["tinygrad_gpt.sample", "--out_dir", str(models / "run"), "--start",
                  b"\xff\xfe"], ["tinygrad_gpt.train", "--max_iters"]]:
        code, lines = process(tmp_path, *argv)
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (argv, lines)


def test_a_diverging_run_says_one_line_in_a_real_process(tmp_path):
    """NumPy's overflow warnings are off in the loop (run_guard.quiet_overflow): one line."""
    (tmp_path / "c.txt").write_text(S.TEXT * 30)
    code, lines = process(tmp_path, "tinygrad_gpt.train", "--data=c.txt", "--n_layer=1",
                          "--n_head=2", "--n_embd=8", "--block_size=8", "--batch_size=2",
                          "--max_iters=2", "--eval_iters=1", "--sample_tokens=0",
                          "--parallel=off", "--learning_rate=1e300")
    assert code == 1 and len(lines) == 1, (code, lines)
    assert lines[0].startswith("error: the loss became nan"), lines
