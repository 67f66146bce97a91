"""python -m tinygrad_gpt.attention_maps: PNG count and size, the text heatmap's blank upper
triangle, fused and composed weights agree, and bad input is one line with exit code 2."""
import struct

import numpy as np
import pytest

from runs import make_run
from tinygrad_gpt import attention_maps as attention
from tokenizer import CharTokenizer

TEXT = "To be, or not"          # 13 tokens


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("attention") / "run")


def png_size(path):
    """(width, height) from a PNG's IHDR chunk."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_one_png_per_layer_and_head_with_the_right_size(run, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert attention.main(["--out_dir", str(run), "--text", TEXT]) == 0
    files = sorted((run / "attention").glob("*.png"))
    assert [f.name for f in files] == ["layer0_head0.png", "layer0_head1.png",
                                      "layer1_head0.png", "layer1_head1.png"]
    side = round(attention.figure_inches(len(TEXT)) * attention.DPI)
    assert all(png_size(f) == (side, side) for f in files)
    assert "wrote 4 PNG(s)" in capsys.readouterr().out
    assert attention.main(["--out_dir", str(run), "--text", TEXT, "--layer", "1",
                           "--save_dir", str(tmp_path / "one")]) == 0
    assert sorted(f.name for f in (tmp_path / "one").iterdir()) == ["layer1_head0.png",
                                                                    "layer1_head1.png"]


def test_text_heatmap_has_a_blank_upper_triangle(run, capsys):
    text = "to be\nor"
    assert attention.main(["--out_dir", str(run), "--text", text, "--layer", "0",
                           "--head", "1", "--text_only"]) == 0
    out = capsys.readouterr().out
    assert "wrote" not in out                        # text only: no PNGs
    lines = out.splitlines()
    start = lines.index("layer 0 head 1")
    labels = ["t", "o", "␣", "b", "e", "↵", "o", "r"]
    assert lines[start + 1].split() == labels
    for t, row in enumerate(lines[start + 2:start + 2 + len(text)]):
        assert row[:6] == f"{t:3d} {labels[t]} "     # position, token
        cells = row[6:].split(" ")                   # then one character per key
        assert len(cells) == t + 1, row              # keys s > t: blank (masked)
        assert all(c in attention.LEVELS for c in cells)


def test_weights_fused_equal_composed_and_rows_sum_to_one(run):
    from tinygrad_gpt.sample import load_run
    model, tok = load_run(run, "cpu")
    ids = tok.encode(TEXT)
    fused = attention.attention_weights(model, ids)
    for block in model.blocks:
        block.attn.fused = False
    composed = attention.attention_weights(model, ids)
    assert sorted(fused) == [0, 1]
    T = len(ids)
    for layer in fused:
        assert fused[layer].shape == (2, T, T)
        np.testing.assert_allclose(fused[layer], composed[layer], atol=1e-6)
        assert np.isnan(fused[layer][:, np.triu_indices(T, 1)[0], np.triu_indices(T, 1)[1]]).all()
        np.testing.assert_allclose(np.nansum(fused[layer], axis=-1), 1.0, atol=1e-5)


def test_token_labels_make_spaces_and_newlines_visible():
    tok = CharTokenizer.train("a b\n")
    assert attention.token_labels(tok, tok.encode("a b\n")) == ["a", "␣", "b", "\\n"]
    assert attention.token_labels(tok, tok.encode("a b\n"), compact=True)[-1] == "↵"


@pytest.mark.parametrize("args, needle", [
    (["--text", ""], "empty"),
    (["--text", "Xyz"], "not in the vocabulary"),
    (["--text", TEXT, "--layer", "2"], "--layer 2 is out of range"),
    (["--text", TEXT, "--head", "-1"], "--head -1 is out of range"),
    (["--text", "to be " * 5], "at most 16"),
])
def test_bad_input_is_one_line_and_exit_2(run, capsys, args, needle):
    code = attention.main(["--out_dir", str(run), *args])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert needle in err and "Traceback" not in err


def test_missing_run_and_a_bigram_run(tmp_path, capsys):
    assert attention.main(["--out_dir", str(tmp_path / "nope"), "--text", "a"]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    bigram = make_run(tmp_path / "bigram", model="bigram")
    assert attention.main(["--out_dir", str(bigram), "--text", "to be"]) == 2
    assert "no attention layers" in capsys.readouterr().err
