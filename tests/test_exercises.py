"""The learner hook (gradcheck --function), the worked answers of docs/README.md's
exercises, the bigram model's gradient check, and the reading path's file list."""
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gpt import GPTConfig
from gpt.bigram import Bigram
from tensor.finite_differences import gradcheck
from tinygrad_gpt import exercises
from tinygrad_gpt import gradcheck as cli
from tokenizer import CharTokenizer

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "docs" / "exercises" / "my_ops.py"
TEXT = "First Citizen: Before we proceed any further, hear me speak. All: Speak, speak. " * 5


def check(capsys, op, spec, examples=3):
    code = cli.main(["--op", op, "--function", spec, "--examples", str(examples)])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("op, name", [("layer_norm", "layer_norm"), ("softmax", "softmax"),
                                      ("gelu", "gelu")])
def test_worked_answers_pass_the_hook(capsys, op, name):
    code, out, _ = check(capsys, op, f"tinygrad_gpt.exercises:{name}")
    assert code == 0, out
    assert re.search(rf"^{op} +3 .* ok  ", out, re.M) and "passed" in out


def test_a_wrong_backward_fails_with_exit_1(capsys):
    code, out, _ = check(capsys, "layer_norm", "tinygrad_gpt.exercises:layer_norm_wrong")
    assert code == 1
    assert re.search(r"^layer_norm .* FAIL  ", out, re.M)
    assert "backward disagrees with finite differences" in out and "worst element" in out


def test_a_wrong_forward_or_a_crash_fails_with_exit_1(capsys, tmp_path):
    (tmp_path / "mine.py").write_text(
        "from tensor.tensor import make\n"
        "def double(x, axis=-1):\n"
        "    return make(2 * x.data, (x,), 'softmax', lambda dy: (2 * dy,))\n"
        "def not_a_tensor(x, axis=-1):\n"
        "    return x.data\n")
    code, out, _ = check(capsys, "softmax", f"{tmp_path / 'mine.py'}:double")
    assert code == 1 and "forward differs from the engine's softmax" in out
    code, out, _ = check(capsys, "softmax", f"{tmp_path / 'mine.py'}:not_a_tensor")
    assert code == 1 and "not a Tensor" in out


def test_the_blank_template_runs_and_fails_until_filled_in(capsys):
    for op in ("layer_norm", "softmax", "gelu"):
        code, out, _ = check(capsys, op, f"{TEMPLATE}:{op}", examples=1)
        assert code == 1 and "raised NotImplementedError" in out, out


def test_the_hook_from_the_command_line():
    result = subprocess.run([sys.executable, "-m", "tinygrad_gpt.gradcheck", "--op",
                             "layer_norm", "--function", "docs/exercises/my_ops.py:layer_norm",
                             "--examples", "1"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1 and "FAIL" in result.stdout and not result.stderr


@pytest.mark.parametrize("args, needle", [
    (["--op", "layer_norm", "--function", "no_such_module_xyz:fn"], "cannot import"),
    (["--op", "layer_norm", "--function", "tinygrad_gpt.exercises:nope"], "no function"),
    (["--op", "layer_norm", "--function", "just_a_name"], "module:function"),
    (["--op", "layer_norm", "--function", "missing/file.py:fn"], "no such file"),
    (["--function", "tinygrad_gpt.exercises:layer_norm"], "exactly one --op"),
    (["--op", "reshape", "--function", "tinygrad_gpt.exercises:layer_norm"], "stand in"),
])
def test_a_bad_spec_is_one_line_and_exit_2(capsys, args, needle):
    code = cli.main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and needle in err, err


def test_every_learner_op_accepts_the_engines_own_function(capsys):
    """The hook's cases are well-formed: the engine's ops pass as 'learner' functions."""
    from tinygrad_gpt.op_cases import LEARNER_OPS, reference_function
    for op in LEARNER_OPS:
        function = reference_function(op)
        checks, *_, ok, note = cli.check_learner(op, function, 1, seed=0, device="cpu")
        assert ok, (op, note)


def test_bigram_model_gradcheck():
    model = Bigram(GPTConfig(vocab_size=5, block_size=8, n_layer=1, n_head=1, n_embd=1))
    ids = np.random.default_rng(0).integers(0, 5, size=(2, 7))

    def loss(weight):
        model.table.weight = weight            # the model's own forward, on a float64 table
        return model(ids[:, :-1], targets=ids[:, 1:])[1]
    result = gradcheck(loss, [model.table.weight.numpy()], upstream=np.ones(()))
    assert result.ok, result.report()


# ----- the exercises' answers -------------------------------------------------------------

def test_exercise_2_softmax_ignores_a_constant():
    x, dy = np.random.default_rng(1).standard_normal((2, 3, 7))
    assert exercises.softmax_shift_gap(x, 50.0) < 1e-12
    assert np.abs(exercises.softmax_grad_row_sums(x, dy)).max() < 1e-12


def test_exercise_3_key_bias_gets_no_gradient():
    from tinygrad_gpt.trace import DEFAULT_TEXT, build_tiny, trace
    model, tok = build_tiny(DEFAULT_TEXT)
    grads = {n: np.linalg.norm(p.grad) for n, p in trace(model, tok.encode(DEFAULT_TEXT)).params}
    for layer in (0, 1):
        attn = f"blocks.{layer}.attn"
        assert grads[f"{attn}.key.bias"] < 1e-9 and grads[f"{attn}.query.bias"] > 1e-6


def test_exercise_4_tied_embedding_gradient_is_two_sums():
    engine, by_hand = exercises.tied_embedding_gradient()
    np.testing.assert_allclose(by_hand, engine, rtol=1e-4, atol=1e-6)


def test_exercise_5_bigram_training_approaches_the_counts():
    tok = CharTokenizer.train(TEXT)
    ids = tok.encode(TEXT)
    counted = exercises.bigram_count_loss(ids, tok.vocab_size)
    trained = exercises.train_bigram(ids, tok.vocab_size)
    assert counted - 1e-4 <= trained < counted + 0.01


def test_exercise_6_parameter_count_formula():
    assert exercises.gpt_parameter_count(GPTConfig.preset("gpt2")) == 124_439_808
    for config in (GPTConfig.preset("gpt-nano"), GPTConfig(vocab_size=7, block_size=5,
                                                           n_layer=2, n_head=2, n_embd=8,
                                                           bias=False)):
        formula, counted = exercises.check_parameter_count(config)
        assert formula == counted


def test_the_reading_path_names_files_that_exist():
    text = (ROOT / "docs" / "README.md").read_text(encoding="utf-8")
    numbered = re.findall(r"^\d+\. `([\w/.]+\.py)`", text, re.M)
    assert len(numbered) >= 25
    for path in numbered:
        assert (ROOT / path).is_file(), path
