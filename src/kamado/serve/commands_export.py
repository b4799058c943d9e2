"""`kamado export hf|gguf` and `kamado import hf`: the command-line side of `export_hf`, `export_gguf`, `import_hf`.

Kept out of `cli.py` so the export code and its flags live together; `cli.py` registers them with
`add_export_parsers(sub)`. Nothing heavy is imported until a command runs, so `kamado --help` stays instant.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from kamado.errors import DataError

GGUF_DTYPES = ("f16", "bf16", "f32")


def _load(path: str) -> tuple[Any, Path]:
    """(model, the run's tokenizer folder) for a run folder or one checkpoint folder."""
    from kamado.train.checkpoint import load_model

    if not Path(path).exists():
        raise DataError(f"{path}: no such run or checkpoint folder")
    model, found = load_model(path)
    return model, found.parent.parent / "tokenizer"


def cmd_export_hf(args: argparse.Namespace, overrides: list[str]) -> None:
    from kamado.serve.export_hf import export_hf

    model, tok_dir = _load(args.checkpoint)
    export_hf(model, tok_dir, Path(args.out))
    print(f"wrote {args.out} (Qwen3ForCausalLM: AutoModelForCausalLM.from_pretrained({str(args.out)!r}))")


def cmd_export_gguf(args: argparse.Namespace, overrides: list[str]) -> None:
    from kamado.serve.export_gguf import export_gguf

    model, tok_dir = _load(args.checkpoint)
    export_gguf(model, tok_dir, Path(args.out), args.dtype, name=tok_dir.parent.name)
    print(f"wrote {args.out} (GGUF, qwen3, {args.dtype})")


def cmd_import_hf(args: argparse.Namespace, overrides: list[str]) -> None:
    from kamado.serve.import_hf import import_hf

    ckpt = import_hf(Path(args.hf_dir), Path(args.out))
    print(f"wrote {ckpt} and {Path(args.out) / 'tokenizer'} (try: kamado generate {args.out} --prompt ...)")


def add_export_parsers(sub: Any) -> None:
    """Register `export hf`, `export gguf` and `import hf` on the `kamado` sub-command parser `sub`."""
    ex = sub.add_parser("export", help="write a trained model for other tools (Hugging Face transformers, llama.cpp)")
    exs = ex.add_subparsers(dest="export_command", required=True, metavar="FORMAT")
    src = "run folder (its newest intact checkpoint) or one checkpoint folder (step_XXXXXXXX)"

    hf = exs.add_parser(
        "hf",
        help="a Hugging Face folder (Qwen3ForCausalLM) that transformers loads without trust_remote_code",
        description="Write config.json, generation_config.json, model.safetensors and the tokenizer (with its chat "
        "template) into a new folder; load it with AutoModelForCausalLM/AutoTokenizer.from_pretrained(DIR).",
    )
    hf.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT", help=src)
    hf.add_argument("--out", required=True, metavar="DIR", help="output folder (must not exist, or be empty)")
    hf.set_defaults(fn=cmd_export_hf)

    gg = exs.add_parser(
        "gguf",
        help="one GGUF file (architecture qwen3) for llama.cpp, Ollama, LM Studio",
        description="Write the model, its BPE tokenizer and chat template as llama.cpp's convert_hf_to_gguf.py lays "
        "out a Qwen3 model. Norms stay float32; the matrices take --dtype.",
    )
    gg.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT", help=src)
    gg.add_argument("--out", required=True, metavar="FILE.gguf", help="output file (replaced if it exists)")
    gg.add_argument("--dtype", choices=GGUF_DTYPES, default="f16", help="type of the weight matrices (default f16)")
    gg.set_defaults(fn=cmd_export_gguf)

    im = sub.add_parser("import", help="turn another tool's model folder into a kamado run")
    ims = im.add_subparsers(dest="import_command", required=True, metavar="FORMAT")
    ih = ims.add_parser(
        "hf",
        help="a Hugging Face Qwen3ForCausalLM folder (e.g. from `kamado export hf`) → a kamado run folder",
        description="Write RUN_DIR/tokenizer and RUN_DIR/checkpoints/step_00000000, readable by `kamado generate`. "
        "Only Qwen3 models that kamado's block computes exactly are accepted.",
    )
    ih.add_argument(
        "hf_dir", metavar="DIR", help="Hugging Face model folder (config.json, model.safetensors, tokenizer)"
    )
    ih.add_argument("--out", required=True, metavar="RUN_DIR", help="new run folder (must not exist, or be empty)")
    ih.set_defaults(fn=cmd_import_hf)
