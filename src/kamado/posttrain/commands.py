"""`kamado sft` and `kamado dpo`: the post-training stages from a config's [sft] / [dpo] sections."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

SFT_HELP = """Supervised fine-tuning on OpenAI `messages` JSONL, loss on the assistant turns only, conversations packed
without attention or position leaking between them. The config's [sft] section says where to start and what to
read (paths relative to the config file, as `kamado run` reads a recipe); its [sft.train] table the steps, batch,
learning rate and context. Resumes after a kill.

example:
  kamado sft recipes/tiny.toml --sft.init=runs/tiny --sft.data='["samples/posttrain/sft.jsonl.gz"]'
data (one line):
  {"messages": [{"role": "user", "content": "猫は何と鳴く？"}, {"role": "assistant", "content": "にゃあ。"}]}
"""

DPO_HELP = """Rounds of Direct Preference Optimization. Each round draws dpo.pairs_per_round pairs: a share
dpo.on_policy_fraction sampled from the current policy (dpo.samples_per_prompt answers to each prompt of
dpo.prompts, judged, best against worst) and the rest from the off-policy pairs of dpo.pairs. Round k+1 starts from
round k's policy; the reference is the SFT model or the previous policy (dpo.reference). Data paths are relative
to the config file. Resumes after a kill.

example:
  kamado dpo recipes/tiny.toml --dpo.init=runs/tiny/sft --dpo.rounds=2
pair (one line):
  {"prompt": [{"role": "user", "content": "日本の首都は？"}], "chosen": "東京です。", "rejected": "大阪です。"}
prompt with a known answer (verifiable judge; one line):
  {"messages": [{"role": "user", "content": "..."}], "answer": "entailment", "label_list": [...],
   "metric": "exact_match"}
"""


def cmd_sft(args: argparse.Namespace, overrides: list[str]) -> None:
    from kamado.config import load_config
    from kamado.posttrain.config import with_paths_from
    from kamado.posttrain.stages import run_sft

    cfg = with_paths_from(load_config(args.config, overrides), Path(args.config).resolve().parent)
    out = Path(args.out or Path(cfg.out_dir) / "sft")
    args.out = out
    result = run_sft(cfg, out, progress=not args.no_progress)
    print(f"SFT finished at step {result['step']} in {out}; data: {result['data']}")


def cmd_dpo(args: argparse.Namespace, overrides: list[str]) -> None:
    from kamado.config import load_config
    from kamado.posttrain.config import with_paths_from
    from kamado.posttrain.stages import run_dpo

    cfg = with_paths_from(load_config(args.config, overrides), Path(args.config).resolve().parent)
    out = Path(args.out or Path(cfg.out_dir) / "dpo")
    args.out = out
    for r in run_dpo(cfg, out, progress=not args.no_progress):
        b, a = r["before"], r["after"]
        print(
            f"round {r['round']}: {r['pairs']['on_policy']} on-policy + {r['pairs']['off_policy']} off-policy pairs; "
            f"reward accuracy {b['reward_accuracy']:.2f} -> {a['reward_accuracy']:.2f}, "
            f"margin {b['reward_margin']:.3f} -> {a['reward_margin']:.3f}"
        )


cmd_sft.accepts_overrides = True  # type: ignore[attr-defined]
cmd_dpo.accepts_overrides = True  # type: ignore[attr-defined]


def add_posttrain_parsers(sub: Any) -> None:
    """Register `sft` and `dpo` on the `kamado` sub-command parser `sub`."""
    fmt = argparse.RawDescriptionHelpFormatter
    for name, fn, text, short in (
        ("sft", cmd_sft, SFT_HELP, "supervised fine-tuning on chat conversations (assistant turns only)"),
        ("dpo", cmd_dpo, DPO_HELP, "rounds of DPO with on-policy (judged) and off-policy preference pairs"),
    ):
        p = sub.add_parser(name, help=short, description=text, formatter_class=fmt)
        p.add_argument("config", help=f"config TOML with an [{name}] section; add --section.key=value overrides")
        p.add_argument("--out", metavar="DIR", help=f"output run folder (default: <out_dir>/{name})")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
        p.set_defaults(fn=fn)
