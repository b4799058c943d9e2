"""Block-level Japanese rules: Markdown blocks by kind, the prose the rules judge, non-Japanese prose cut out."""

from __future__ import annotations

from datatrove.data import Document

from kamado.corpus.blocks import ForeignBlockCutter, cut_foreign_blocks, japanese_fraction, prose_text, split_blocks

MANUAL = """# 11. データー変換

Debian システム上のデーターフォーマット変換のツールを記します。`iconv` や `nkf` を使います。

```
$ iconv -f EUC-JP -t UTF-8 < in.txt > out.txt
$ nkf -w in.txt
```

| パッケージ | サイズ |
|---|---|
| `libc6` | 12977 |

- `recode` はロケール間の変換ソフトです。
- Copyright 2005 Some Body. All rights reserved.

    indented code line one
    indented code line two

This paragraph was never translated and stays in English in the manual.
See https://www.debian.org/doc/ for more.
"""


def test_blocks_have_their_kinds_in_order():
    kinds = [b.kind for b in split_blocks(MANUAL)]
    assert kinds == ["heading", "paragraph", "code", "table", "list", "list", "code", "paragraph"]
    code = split_blocks(MANUAL)[2].text
    assert code.startswith("```") and code.endswith("```") and "nkf -w in.txt" in code


def test_prose_leaves_out_code_tables_inline_code_and_urls():
    prose = prose_text(MANUAL)
    assert "データーフォーマット変換" in prose and "never translated" in prose
    for absent in ("iconv", "libc6", "12977", "indented code", "https://", "nkf"):
        assert absent not in prose, absent


def test_japanese_fraction_ignores_inline_code_and_marks():
    assert japanese_fraction("`aptitude` を**実行**する。") == 1.0
    assert japanese_fraction("Run `lintian` over the package.") == 0.0
    assert japanese_fraction("`foobar$` **`aptitude`**") == 0.0  # nothing left to judge ...
    half = japanese_fraction("日本語abc")
    assert 0.49 < half < 0.51


def test_cutting_keeps_japanese_prose_code_and_tables_and_cuts_english_prose():
    text, cut = cut_foreign_blocks(MANUAL)
    assert cut == 2  # the copyright line and the untranslated paragraph
    assert "Copyright" not in text and "never translated" not in text
    for kept in ("# 11. データー変換", "$ nkf -w in.txt", "| `libc6` | 12977 |", "indented code line two", "`recode`"):
        assert kept in text, kept
    assert cut_foreign_blocks("`foobar$` **`aptitude`**\n\n本文です。")[1] == 0  # ... so it is not cut


def test_the_step_cuts_counts_and_drops_pages_without_prose():
    docs = [
        Document(text=MANUAL, id="manual"),
        Document(text="```\nonly code\n```", id="code"),
        Document(text="本文だけのページです。", id="plain"),
    ]
    step = ForeignBlockCutter()
    out = {d.id: d for d in step.run(iter(docs))}
    assert set(out) == {"manual", "plain"} and out["manual"].metadata["blocks_cut"] == 2
    assert "blocks_cut" not in out["plain"].metadata and out["plain"].text == "本文だけのページです。"
    assert step.stats["blocks_cut"].total == 2 and step.stats["no_prose"].total == 1
