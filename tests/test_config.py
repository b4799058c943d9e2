"""Typed config: presets load, overrides apply with types, unknown keys and wrong types name the key."""

from pathlib import Path

import pytest

from kamado.config import RunConfig, apply_overrides, from_dict, load_config
from kamado.corpus.config import load_corpus_config
from kamado.errors import ConfigError

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.mark.parametrize("name", ["tiny", "small", "1b", "8b", "100b"])
def test_every_preset_loads_and_validates(name):
    cfg = load_config(RECIPES / f"{name}.toml")
    assert cfg.name == name
    assert cfg.data.seq_len <= cfg.model.max_seq_len


def test_dotted_overrides_are_parsed_as_toml_values():
    cfg = load_config(
        RECIPES / "tiny.toml",
        ["--optim.lr=3e-4", "--model.qk_norm=false", "--train.steps=7", "--name=x", "--optim.betas=[0.8, 0.9]"],
    )
    assert cfg.optim.lr == 3e-4 and cfg.model.qk_norm is False and cfg.train.steps == 7 and cfg.name == "x"
    assert cfg.optim.betas == (0.8, 0.9)


def test_unknown_key_is_an_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"unknown config key 'optim\.lrr'"):
        load_config(RECIPES / "tiny.toml", ["--optim.lrr=1"])
    with pytest.raises(ConfigError, match=r"unknown config key 'modle'"):
        from_dict(RunConfig, {"modle": {}})


def test_wrong_type_is_an_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"train\.steps"):
        load_config(RECIPES / "tiny.toml", ["--train.steps=many"])
    with pytest.raises(ConfigError, match=r"model\.qk_norm"):
        from_dict(RunConfig, {"model": {"qk_norm": 1}})


def test_inconsistent_shape_is_rejected():
    with pytest.raises(ConfigError, match="n_kv_heads"):
        load_config(RECIPES / "small.toml", ["--model.n_kv_heads=3"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nd_model = 1")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(bad)


def test_override_must_have_a_value():
    with pytest.raises(ConfigError, match=r"--section\.key=value"):
        apply_overrides({}, ["--optim.lr"])


# ---- bad values fail at load, with one line naming the key and the allowed range ---------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("--train.steps=-5", "train.steps = -5: must be an integer >= 1"),
        ("--train.grad_accum=0", "train.grad_accum = 0: must be an integer >= 1"),
        ("--optim.lr=nan", "optim.lr = nan: must be a finite number > 0"),
        ("--optim.lr=-3e-4", "optim.lr = -0.0003: must be a finite number > 0"),
        ("--optim.lr=1" + "0" * 400, "optim.lr = inf: must be a finite number > 0"),  # no OverflowError
        ("--optim.betas=[0.9, 1.0]", "optim.betas[1] = 1.0: must be a number in [0, 1)"),
        ("--optim.eps=0", "optim.eps = 0.0: must be a finite number > 0"),
        ("--optim.weight_decay=-inf", "optim.weight_decay = -inf"),
        ('--schedule.kind="bogus"', "schedule.kind = 'bogus': must be one of 'cosine', 'wsd', 'constant'"),
        ("--schedule.warmup_steps=-1", "schedule.warmup_steps = -1: must be an integer >= 0"),
        ("--schedule.decay_fraction=1.5", "schedule.decay_fraction = 1.5: must be a number in [0, 1]"),
        ("--schedule.min_lr_ratio=inf", "schedule.min_lr_ratio = inf"),
        ('--train.dtype="fp16"', "train.dtype = 'fp16': must be one of 'bf16', 'fp32'"),
        ("--train.eval_every=-1", "train.eval_every = -1"),
        ("--train.log_every=0", "train.log_every = 0: must be an integer >= 1"),
        ("--train.steps=1" + "0" * 30, "train.steps = 1.000e+30: must be an integer >= 1 and < 2^63"),
        ("--stability.window=0", "stability.window = 0"),
        ("--stability.min_history=51", "stability.min_history = 51: must be <= stability.window (50)"),
        ("--stability.z_threshold=nan", "stability.z_threshold = nan"),
        ("--checkpoint.every=-1", "checkpoint.every = -1"),
        ("--generate.top_p=0", "generate.top_p = 0.0: must be a number in (0, 1]"),
        ("--generate.temperature=-1", "generate.temperature = -1.0: must be a finite number >= 0"),
        ('--generate.prompts=["a", ""]', "generate.prompts[1] is empty"),
        ("--model.n_heads=0", "model.n_heads = 0"),  # was a ZeroDivisionError
        ("--model.d_model=1e308", "model.d_model = "),  # was a crash in torch
        ("--model.norm_eps=-1e-6", "model.norm_eps = -1e-06"),
        ("--data.seq_len=4096", "data.seq_len = 4096: must be <= model.max_seq_len (2048)"),
        ("--data.phases=[{start_tokens = 5}]", "data.phases[0].start_tokens = 5: the first phase must start at 0"),
        ("--data.phases=[{weights = {ja = -1.0}}]", "data.phases[0].weights.ja = -1.0: must be a finite number >= 0"),
        ("--data.phases=[{weights = {ja = 0.0}}]", "data.phases[0].weights: must have a positive, finite sum"),
        ("--tokenizer.vocab_size=100", "tokenizer.vocab_size = 100: must be an integer in 263..4294967296"),
        ("--corpus.web.dedup.threshold=nan", "corpus.web.dedup.threshold = nan"),
        ("--corpus.web.quality.min_hiragana_frac=2.0", "corpus.web.quality.min_hiragana_frac = 2.0"),
        ("--corpus.web.tasks=0", "corpus.web.tasks = 0"),
        ("--corpus.web.reshard.compresslevel=10", "corpus.web.reshard.compresslevel = 10"),
    ],
)
def test_bad_values_fail_at_load_naming_the_key_and_range(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(RECIPES / "tiny.toml", [override])
    assert str(e.value).startswith(message) and "\n" not in str(e.value), str(e.value)


def test_meaningful_zeros_stay_valid():
    """0 disables z-loss, clipping, warmup, periodic evals and checkpoints, pruning, top-k; 0 °C is greedy."""
    zeros = [
        "train.z_loss", "optim.grad_clip", "optim.weight_decay", "schedule.warmup_steps", "schedule.decay_fraction",
        "schedule.min_lr_ratio", "train.eval_every", "train.peak_flops", "train.threads", "train.seed", "data.seed",
        "checkpoint.every", "checkpoint.keep_last", "generate.temperature", "generate.top_k", "generate.seed",
        "tokenizer.max_train_chars", "tokenizer.min_frequency", "optim.betas",
    ]  # fmt: skip
    overrides = [f"--{k}=[0, 0]" if k == "optim.betas" else f"--{k}=0" for k in zeros]
    cfg = load_config(RECIPES / "tiny.toml", overrides)
    assert cfg.train.z_loss == 0 and cfg.checkpoint.every == 0 and cfg.optim.betas == (0.0, 0.0)


def test_every_corpus_preset_loads_and_validates():
    for preset in sorted((RECIPES / "corpus").glob("*.toml")):
        load_corpus_config(preset)
    with pytest.raises(ConfigError, match=r"^dedup\.threshold = nan: must be a number in \[0, 1\]$"):
        load_corpus_config(None, ["--dedup.threshold=nan"])
    with pytest.raises(ConfigError, match=r"^corpus\.kana_min_fraction = inf"):
        load_corpus_config(None, ["--kana_min_fraction=inf"])


def test_the_gpu_scripts_overrides_are_valid_config():
    """bench/gpu_parallel.sh runs only where a GPU is lent (minutes a session): every `--section.key=value` it
    passes to `kamado train` must load on the 1b preset, so a misspelt key or value fails here, not there."""
    import re

    text = (RECIPES.parent / "bench" / "gpu_parallel.sh").read_text(encoding="utf-8").replace("\\\n", " ")
    seen = []
    for line in text.splitlines():  # each command's overrides together (some depend on each other)
        overrides = re.findall(r"--([a-z_]+\.[a-z_0-9]+=[^\s\"'\\;]+)", line)
        if overrides:
            load_config(RECIPES / "1b.toml", [f"--{o}".replace("$B", "8") for o in overrides])  # $B: the batch
            seen += overrides
    assert len(seen) > 20 and "parallel.fsdp_reshard=never" in seen
