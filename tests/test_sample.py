"""python -m tinygrad_gpt.sample: from a training run and from a Hugging Face GPT-2 folder."""
import pytest

import tensor
from gpt import GPT, GPTConfig
from tinygrad_gpt import sample, train
from tokenizer import BPETokenizer

TEXT = "ROMEO:\nBut soft, what light through yonder window breaks?\n\n" * 60


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    (root / "t.txt").write_text(TEXT)
    mp = pytest.MonkeyPatch()
    mp.setenv("TINYGRAD_GPT_CACHE", str(root / "cache"))
    code = train.main([f"--data={root / 't.txt'}", f"--out_dir={root / 'out'}",
                       "--max_iters=30", "--n_layer=1", "--n_head=2", "--n_embd=16",
                       "--block_size=16", "--batch_size=4", "--eval_iters=1",
                       "--sample_tokens=0", "--learning_rate=1e-2"])
    mp.undo()
    assert code == 0
    return root / "out"


def sample_text(capsys, *args):
    assert sample.main(list(args)) == 0
    return capsys.readouterr().out


def test_samples_stream_from_a_run_and_are_reproducible(run_dir, capsys):
    args = ["--out_dir", str(run_dir), "--start", "ROMEO:", "--num_samples", "2",
            "--max_new_tokens", "40", "--seed", "3"]
    first = sample_text(capsys, *args)
    assert first.count("ROMEO:") >= 2 and first.count("---------------") == 1
    assert sample_text(capsys, *args) == first
    assert sample_text(capsys, *args[:-1], "4") != first


def test_greedy_sampling_is_deterministic_across_seeds(run_dir, capsys):
    base = ["--out_dir", str(run_dir), "--num_samples", "1", "--max_new_tokens", "30",
            "--temperature", "0"]
    assert sample_text(capsys, *base, "--seed", "1") == sample_text(capsys, *base, "--seed", "2")


def test_prompt_from_a_file(run_dir, tmp_path, capsys):
    (tmp_path / "prompt.txt").write_text("But soft")
    out = sample_text(capsys, "--out_dir", str(run_dir), "--start", f"FILE:{tmp_path / 'prompt.txt'}",
                      "--num_samples", "1", "--max_new_tokens", "10")
    assert out.startswith("But soft") and len(out) >= len("But soft") + 10


def test_sampling_from_a_hugging_face_layout_folder(tmp_path, capsys):
    tok = BPETokenizer.train(TEXT, 300)
    tensor.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2,
                          n_embd=16))
    model.save_pretrained(tmp_path)
    tok.save(tmp_path)
    out = sample_text(capsys, "--init_from", str(tmp_path), "--start", "But soft",
                      "--num_samples", "1", "--max_new_tokens", "12", "--temperature", "0")
    expected = model.generate([tok.encode("But soft")], 12, temperature=0)[0]
    assert out == tok.decode(expected.tolist()) + "\n"


def test_the_module_entry_points_run(run_dir):
    """`python -m tinygrad_gpt.sample` / `.attention` (their __main__ blocks), end to end."""
    import subprocess
    import sys
    sample_run = subprocess.run([sys.executable, "-m", "tinygrad_gpt.sample", "--out_dir",
                                 str(run_dir), "--num_samples", "1", "--max_new_tokens", "5",
                                 "--start", "ROMEO:"], capture_output=True, text=True)
    assert sample_run.returncode == 0, sample_run.stderr
    assert sample_run.stdout.startswith("ROMEO:")
    attention_run = subprocess.run([sys.executable, "-m", "tinygrad_gpt.attention_maps", "--out_dir",
                                    str(run_dir), "--text", "ROMEO:", "--format", "text"],
                                   capture_output=True, text=True)
    assert attention_run.returncode == 0, attention_run.stderr
