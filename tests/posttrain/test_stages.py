"""The SFT stage and DPO rounds end to end on a small run: outputs that load like any run, exact resume after a
kill, the pairs of a round written once, a round's reference and starting policy, the report of what was skipped."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from kamado.cli import main
from kamado.config import RunConfig, to_dict
from kamado.errors import ConfigError
from kamado.posttrain.stages import run_dpo, run_sft
from kamado.train.checkpoint import find_checkpoint, load_model, save_checkpoint

from .conftest import small_model

QA = [
    ("猫は何と鳴く？", "にゃあ。"),
    ("犬は何と鳴く？", "わん。"),
    ("牛は何と鳴く？", "もう。"),
    ("鳥は？", "ちゅん。"),
]


@pytest.fixture
def base(tok, tok_dir, tmp_path) -> tuple[RunConfig, Path]:
    """A 'pre-trained' run (random weights) with its tokenizer, and a config whose [sft]/[dpo] point at data."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tok_dir, run / "tokenizer")
    model = small_model(tok.vocab_size)
    cfg = RunConfig(out_dir=str(run))
    cfg.model = model.cfg
    save_checkpoint(run / "checkpoints", 1, model, None, {"config": to_dict(cfg)})
    data = tmp_path / "sft.jsonl"
    lines = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in QA * 3]
    lines.append({"messages": [{"role": "user", "content": "答えのない会話"}]})
    data.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
    pairs = tmp_path / "pairs.jsonl"
    recs = [{"prompt": [{"role": "user", "content": q}], "chosen": a, "rejected": "知らない。"} for q, a in QA]
    recs.append({"prompt": [{"role": "user", "content": "同じ"}], "chosen": "はい。", "rejected": "はい。"})
    pairs.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in recs), encoding="utf-8")
    cfg.sft.init, cfg.sft.data = str(run), [str(data)]
    cfg.sft.train.steps, cfg.sft.train.batch_size, cfg.sft.train.seq_len, cfg.sft.train.lr = 6, 2, 64, 3e-3
    cfg.sft.train.checkpoint_every = 3
    cfg.dpo.pairs = [str(pairs)]
    cfg.dpo.rounds, cfg.dpo.pairs_per_round, cfg.dpo.on_policy_fraction = 2, 4, 0.0
    cfg.dpo.train.steps, cfg.dpo.train.batch_size, cfg.dpo.train.seq_len, cfg.dpo.train.lr = 4, 2, 64, 3e-3
    cfg.train.peak_flops, cfg.train.dtype = 1e9, "fp32"
    return cfg, tmp_path


def test_sft_trains_reports_skips_and_loads_like_a_run(base):
    cfg, tmp = base
    result = run_sft(cfg, tmp / "sft", progress=False)
    assert result["step"] == 6 and result["data"]["conversations"] == 12
    assert result["data"]["skipped"] == {"no assistant turn": 1}
    assert json.loads((tmp / "sft/sft_data.json").read_text())["trained_tokens"] > 0
    model, found = load_model(tmp / "sft")
    assert found.name == "step_00000006" and (tmp / "sft/tokenizer/tokenizer.json").is_file()
    start, _ = load_model(cfg.sft.init)
    assert not torch.equal(model.embed.weight, start.embed.weight)  # it trained from the given start
    rows = [json.loads(x) for x in (tmp / "sft/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 7))


def test_sft_resumes_exactly_after_a_kill(base, monkeypatch):
    cfg, tmp = base
    run_sft(cfg, tmp / "full", progress=False)
    from kamado.train import callbacks

    real = callbacks.failpoint

    def kill_after_first_checkpoint(name):
        real(name)
        if name == "train.after_checkpoint":
            raise KeyboardInterrupt

    monkeypatch.setattr(callbacks, "failpoint", kill_after_first_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        run_sft(cfg, tmp / "cut", progress=False)
    monkeypatch.setattr(callbacks, "failpoint", real)
    assert find_checkpoint(tmp / "cut").name == "step_00000003"
    run_sft(cfg, tmp / "cut", progress=False)
    a, _ = load_model(tmp / "full")
    b, _ = load_model(tmp / "cut")
    for (n, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5, msg=n)


def test_dpo_rounds_chain_policies_and_write_their_pairs_once(base):
    cfg, tmp = base
    run_sft(cfg, tmp / "sft", progress=False)
    cfg.dpo.init = str(tmp / "sft")
    rounds = run_dpo(cfg, tmp / "dpo", progress=False)
    assert [r["round"] for r in rounds] == [1, 2]
    assert rounds[0]["start"] == str(find_checkpoint(tmp / "sft"))
    assert rounds[1]["start"] == str(find_checkpoint(tmp / "dpo/round_1"))
    # every round trains on pairs_per_round pairs: an unusable draw (the identical pair) is replaced by the next
    assert [r["pairs"]["off_policy"] for r in rounds] == [4, 4]
    assert set(rounds[0]["pairs"]["skipped"]) <= {"chosen identical to rejected"}
    assert rounds[0]["before"]["reward_accuracy"] <= rounds[0]["after"]["reward_accuracy"]
    assert rounds[0]["after"]["reward_margin"] > rounds[0]["before"]["reward_margin"]
    # round 2's reference is the SFT model: its stored reference log-probs are the SFT model's
    sft_model, _ = load_model(tmp / "sft")
    from kamado.posttrain.dpo import prepare_pairs, reference_logps
    from kamado.tokenizer import Tokenizer

    stored = [json.loads(x) for x in (tmp / "dpo/round_2/pairs.jsonl").read_text().splitlines()]
    fresh, _ = prepare_pairs(
        [{k: v for k, v in p.items() if not k.startswith("ref_")} for p in stored],
        Tokenizer.load(tmp / "sft/tokenizer"),
        64,
    )
    reference_logps(sft_model, fresh)
    for s, f in zip(stored, fresh, strict=True):
        assert s["ref_chosen_logp"] == pytest.approx(f["ref_chosen_logp"], rel=1e-5)
    metrics = [json.loads(x) for x in (tmp / "dpo/round_2/metrics.jsonl").read_text().splitlines()]
    assert {"reward_margin", "reward_accuracy", "chosen_logps", "rejected_logps"} <= set(metrics[-1])
    # a rerun finds every round done and changes nothing
    mtime = (tmp / "dpo/round_2/round.json").stat().st_mtime_ns
    assert run_dpo(cfg, tmp / "dpo", progress=False) == rounds
    assert (tmp / "dpo/round_2/round.json").stat().st_mtime_ns == mtime


def test_missing_inputs_are_one_clear_error(base, capsys):
    cfg, tmp = base
    cfg.sft.data = []
    with pytest.raises(ConfigError, match=r"sft.init .* and sft.data"):
        run_sft(cfg, tmp / "x", progress=False)
    assert main(["dpo", str(tmp / "missing.toml")]) == 2
    assert "missing.toml" in capsys.readouterr().err


def test_the_recipe_merges_sft_with_the_last_round_or_the_rounds_over_sft(base):
    from kamado.recipe.posttrain import _merge

    cfg, tmp = base
    run_sft(cfg, tmp / "sft", progress=False)
    cfg.dpo.init = str(tmp / "sft")
    run_dpo(cfg, tmp / "dpo", progress=False)
    sft, _ = load_model(tmp / "sft")
    r1, _ = load_model(tmp / "dpo/round_1")
    r2, _ = load_model(tmp / "dpo/round_2")
    rounds = [tmp / "dpo/round_1", tmp / "dpo/round_2"]
    cfg.merge.method = "task_arithmetic"
    merged, _ = load_model(_merge(cfg, tmp, rounds))
    name = "layers.0.attn.qkv_proj.weight"
    s, a, b = (m.state_dict()[name] for m in (sft, r1, r2))
    torch.testing.assert_close(merged.state_dict()[name], s + (a - s) + (b - s), atol=1e-6, rtol=1e-5)
    cfg.merge.method = "linear"
    (tmp / "merged").rename(tmp / "merged_ta")
    merged, _ = load_model(_merge(cfg, tmp, rounds))
    torch.testing.assert_close(merged.state_dict()[name], (s + b) / 2, atol=1e-6, rtol=1e-5)


def test_the_commands_read_data_paths_relative_to_the_config_file(base, capsys, monkeypatch, tmp_path):
    cfg, tmp = base
    conf = tmp / "conf"
    conf.mkdir()
    (conf / "sft.jsonl").write_bytes(Path(cfg.sft.data[0]).read_bytes())
    (conf / "pairs.jsonl").write_bytes(Path(cfg.dpo.pairs[0]).read_bytes())
    m = cfg.model
    (conf / "post.toml").write_text(
        f'out_dir = "{tmp / "cli"}"\n'
        f"[model]\nvocab_size = {m.vocab_size}\nd_model = {m.d_model}\nn_layers = {m.n_layers}\n"
        f"n_heads = {m.n_heads}\nn_kv_heads = {m.n_kv_heads}\nffn_hidden = {m.ffn_hidden}\n"
        f"max_seq_len = {m.max_seq_len}\n"
        f'[data]\nseq_len = 64\n[train]\npeak_flops = 1e9\ndtype = "fp32"\n'
        f'[sft]\ninit = "{cfg.sft.init}"\ndata = ["sft.jsonl"]\n[sft.train]\nsteps = 2\nbatch_size = 2\nseq_len = 64\n'
        f'[dpo]\npairs = ["pairs.jsonl"]\nrounds = 1\npairs_per_round = 2\non_policy_fraction = 0.0\n'
        f"[dpo.train]\nsteps = 1\nbatch_size = 1\nseq_len = 64\n",
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path.parent)  # not the config's folder: the paths must still resolve
    assert main(["sft", str(conf / "post.toml"), "--no-progress"]) == 0
    assert "SFT finished at step 2" in capsys.readouterr().out
    assert main(["dpo", str(conf / "post.toml"), f"--dpo.init={tmp / 'cli' / 'sft'}", "--no-progress"]) == 0
    assert re.search(r"round 1: 0 on-policy \+ [12] off-policy pairs", capsys.readouterr().out)  # 1: a refused pair
    assert find_checkpoint(tmp / "cli" / "dpo" / "round_1").name == "step_00000001"
