"""Training settings: nanoGPT's keys, presets < TOML < command line, nanoGPT-style syntax."""
import doctest
from dataclasses import asdict

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpt import GPTConfig
from tinygrad_gpt import settings
from tinygrad_gpt.settings import (FIELDS, FINETUNE_PRESETS, PRESETS, TRAINING_PRESETS,
                                   TrainConfig, UserError, build_parser, parse,
                                   parse_with_sources)

NANOGPT_KEYS = ["n_layer", "n_head", "n_embd", "block_size", "batch_size", "dropout", "bias",
                "learning_rate", "max_iters", "lr_decay_iters", "min_lr", "warmup_iters",
                "weight_decay", "beta1", "beta2", "grad_clip", "gradient_accumulation_steps",
                "eval_interval", "eval_iters", "log_interval", "out_dir", "seed", "device",
                "dtype"]


def test_every_nanogpt_key_exists_and_is_documented_in_help():
    help_text = build_parser("x").format_help()
    for key in NANOGPT_KEYS:
        assert key in FIELDS
        assert f"--{key}" in help_text


def test_every_setting_has_a_help_sentence():
    actions = {a.dest: a.help for a in build_parser("x")._actions}
    for key in FIELDS:
        assert not actions[key].startswith("(default"), f"--{key} has no description"


@pytest.mark.parametrize("argv", [
    ["--max_iters=7", "--bias=True"], ["--max_iters", "7", "--bias", "true"],
    ["--max-iters=7", "--bias"], ["--max-iters", "7", "--bias=1"],
])
def test_equals_space_dash_and_underscore_spellings_agree(argv):
    config, resume, explicit = parse(argv)
    assert config.max_iters == 7 and config.bias is True and not resume
    assert set(explicit) == {"max_iters", "bias"}


@pytest.mark.parametrize("text,value", [("True", True), ("false", False), ("FALSE", False),
                                        ("0", False), ("1", True)])
def test_booleans(text, value):
    assert parse([f"--decay_lr={text}"])[0].decay_lr is value


def test_cpu_preset_has_nanogpts_values():
    config = parse(["--preset=shakespeare-char-cpu"])[0]
    assert (config.n_layer, config.n_head, config.n_embd, config.block_size) == (4, 4, 128, 64)
    assert (config.batch_size, config.max_iters, config.lr_decay_iters) == (12, 2000, 2000)
    assert config.bias is False and config.learning_rate == 1e-3 and config.min_lr == 1e-4
    assert config.beta2 == 0.99 and config.warmup_iters == 100
    assert config.weight_decay == 0.1 and config.grad_clip == 1.0 and config.dropout == 0.0


def test_baby_gpt_preset_has_nanogpts_values():
    config = parse(["--preset", "baby-gpt"])[0]
    assert (config.n_layer, config.n_head, config.n_embd, config.block_size) == (6, 6, 384, 256)
    assert (config.batch_size, config.dropout, config.max_iters) == (64, 0.2, 5000)
    assert config.bias is False and config.beta2 == 0.99 and config.min_lr == 1e-4


def test_precedence_command_line_over_file_over_preset(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text("n_layer = 2\nmax_iters = 50\nlearning-rate = 0.01\n")
    config = parse(["--preset=baby-gpt", f"--config={toml}", "--max_iters=9"])[0]
    assert config.n_layer == 2                    # file over preset
    assert config.max_iters == 9                  # command line over file
    assert config.learning_rate == 0.01           # dashes allowed in the file too
    assert config.n_embd == PRESETS["baby-gpt"]["n_embd"]   # preset over defaults


def test_defaults_are_the_cpu_shakespeare_run():
    default = TrainConfig()
    for key, value in PRESETS["shakespeare-char-cpu"].items():
        assert getattr(default, key) == value, key


def test_unknown_key_suggests_the_closest():
    with pytest.raises(UserError, match="did you mean --n_embd"):
        parse(["--n_emb=3"])


def test_abbreviations_are_not_silently_accepted():
    with pytest.raises(UserError):
        parse(["--max=3"])


# Every field of both training presets, as `--preset NAME` gave them before the model shapes
# moved to gpt.config.PRESETS (read from that code): the move must not change a value.
TRAIN_DEFAULTS = dict(
    out_dir="out", data="", init_from="", tokenizer="char", vocab_size=512, eval_interval=250,
    log_interval=10, eval_iters=20, always_save_checkpoint=True, sample_tokens=200,
    model="gpt", n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0, bias=False,
    batch_size=12, gradient_accumulation_steps=1, learning_rate=1e-3, max_iters=2000,
    weight_decay=0.1, beta1=0.9, beta2=0.99, grad_clip=1.0, decay_lr=True, warmup_iters=100,
    lr_decay_iters=2000, min_lr=1e-4, device="cpu", dtype="float32", parallel="auto",
    seed=1337, batch_stream="sequential", zero=0, bucket_mb=25.0, overlap=True, overfit_batch=False,
    lora_rank=0, lora_alpha=16.0, lora_targets="attn,mlp", export_hf="")
PINNED = {
    "shakespeare-char-cpu": TRAIN_DEFAULTS,
    "baby-gpt": {**TRAIN_DEFAULTS, "n_layer": 6, "n_head": 6, "n_embd": 384,
                 "block_size": 256, "dropout": 0.2, "batch_size": 64, "max_iters": 5000,
                 "lr_decay_iters": 5000, "eval_iters": 200, "always_save_checkpoint": False},
    # nanoGPT's config/finetune_shakespeare.py (+ its train.py's beta2 and log_interval),
    # dropout 0.1; the model's shape stays the defaults here: --init_from replaces it.
    "finetune-shakespeare": {**TRAIN_DEFAULTS, "init_from": "base", "eval_interval": 5,
                             "eval_iters": 40, "log_interval": 1,
                             "always_save_checkpoint": False, "batch_size": 1,
                             "gradient_accumulation_steps": 32, "max_iters": 20,
                             "learning_rate": 3e-5, "decay_lr": False, "beta2": 0.95,
                             "dropout": 0.1, "out_dir": "out-finetune-shakespeare"},
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_each_preset_gives_exactly_its_pinned_config(name):
    extra = ["--init_from", "base"] if name in FINETUNE_PRESETS else []
    config = parse(["--preset", name, *extra])[0]
    assert asdict(config) == PINNED[name]
    for key, value in asdict(config).items():          # 2000, not 2000.0; 0.0, not 0
        assert type(value) is type(PINNED[name][key]), key


def test_defaults_and_no_preset_give_the_cpu_run():
    assert asdict(parse([])[0]) == PINNED["shakespeare-char-cpu"] == asdict(TrainConfig())


def test_the_divisibility_error_names_the_flags_and_a_fix():
    with pytest.raises(UserError) as info:
        parse(["--n_embd=130", "--n_head=4"])
    assert str(info.value) == ("--n_embd (130) must be divisible by --n_head (4), "
                               "e.g. --n_embd=128: the heads share the width equally")


@given(n_layer=st.integers(-1, 3), n_head=st.integers(-1, 8), n_embd=st.integers(-1, 40),
       block_size=st.integers(-1, 3), dropout=st.floats(-0.5, 1.5), bias=st.booleans())
def test_model_settings_are_checked_by_gptconfigs_own_rules(**sizes):
    """One rule, two spellings: TrainConfig rejects exactly what GPTConfig rejects, with
    GPTConfig's message in flags."""
    try:
        GPTConfig(vocab_size=65, **sizes)
        expected = None
    except ValueError as e:
        expected = str(e).replace("n_", "--n_").replace("block_size", "--block_size") \
            .replace("dropout", "--dropout")
    try:
        TrainConfig(**sizes).validate()
        got = None
    except UserError as e:
        got = str(e)
    assert got == expected


def test_the_docstring_examples_hold():
    assert doctest.testmod(settings).failed == 0


def test_every_preset_is_pinned():
    assert sorted(PRESETS) == sorted(PINNED)


@pytest.mark.parametrize("name", sorted(TRAINING_PRESETS))
def test_a_training_preset_builds_the_model_preset_of_its_name(name):
    config = parse(["--preset", name])[0]
    assert config.model_config(vocab_size=65) == GPTConfig.preset(name)    # V = 65: Shakespeare


# ----- fine-tuning presets and where each setting came from --------------------------------
SHAPE = {"model", "n_layer", "n_head", "n_embd", "block_size", "bias", "tokenizer",
         "vocab_size"}


@pytest.mark.parametrize("name", sorted(FINETUNE_PRESETS))
def test_a_finetuning_preset_sets_no_model_shape_and_needs_init_from(name):
    assert not SHAPE & set(FINETUNE_PRESETS[name])          # --init_from's folder gives them
    with pytest.raises(UserError, match="add --init_from PATH"):
        parse(["--preset", name])
    assert parse(["--preset", name, "--resume"])[1]        # a resumed run has its init_from


def test_sources_name_the_preset_the_file_and_the_command_line(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text("n_layer = 2\n")
    config, _, sources = parse_with_sources(["--preset=baby-gpt", f"--config={toml}",
                                             "--max_iters=9", "--init_from=x"])
    assert sources["n_layer"] == f"--config {toml}"
    assert sources["n_embd"] == sources["batch_size"] == "--preset baby-gpt"
    assert sources["max_iters"] == sources["init_from"] == settings.COMMAND_LINE
    assert "seed" not in sources and config.init_from == "x"
    assert parse(["--preset=baby-gpt", f"--config={toml}", "--max_iters=9"])[2] == \
        ["max_iters"]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e999"])
def test_a_float_setting_must_be_a_finite_number(value):
    with pytest.raises(UserError, match="--learning_rate expects float"):
        parse([f"--learning_rate={value}"])
