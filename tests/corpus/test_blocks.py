"""Block-level Japanese rules: Markdown blocks by kind, the prose the rules judge, non-Japanese prose cut out."""

from __future__ import annotations

from datatrove.data import Document

from kamado.corpus.blocks import cut_foreign_blocks, japanese_fraction, prose_text, split_blocks

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


def test_code_that_trafilatura_did_not_fence_is_code():
    from kamado.corpus.blocks import looks_like_code

    shell = "$ sudo cryptsetup open /dev/sdc5 ninja --type luks\nEnter passphrase for /dev/sdc5:"
    config = "[Desktop Entry]\nVersion=1.0\nExec=/usr/bin/chromium %U\nIcon=chromium"
    assert looks_like_code(shell) and looks_like_code(config)
    for prose in (
        "This paragraph was never translated and stays in English, as it was (mostly).",
        "**aptitude** を実行するには、`aptitude` と入力してください（詳しくは「設定」を参照）。",
    ):
        assert not looks_like_code(prose), prose
    assert [b.kind for b in split_blocks(f"説明の段落です。\n\n{config}")] == ["paragraph", "code"]


def test_foreign_prose_is_a_share_of_prose_characters():
    from kamado.corpus.blocks import foreign_prose_fraction

    ja, en = "日本語の文です。" * 5, "An English sentence here."  # 40 and 22 characters without spaces
    assert foreign_prose_fraction(f"{ja}\n\n{en}") == 22 / 62
    assert foreign_prose_fraction(f"{ja}\n\n```\n{en * 20}\n```") == 0.0  # code is not prose
    assert foreign_prose_fraction("```\nonly code\n```") == 0.0


def _manual(code_lines: int = 40) -> str:
    """A Japanese manual page: prose with command names, long code blocks and a package table (more ASCII than
    Japanese in all), an English copyright line."""
    sentences = [
        "このコマンドはソースからパッケージを作成し、結果を一つ上のディレクトリーに書き出します。",
        "設定は`debian/rules`で変えられますが、多くの場合は既定のままで十分に動きます。",
        "署名をしない場合には、次のように二つのオプションを付けて実行してください。",
        "ビルドが失敗したときは、まず依存関係が満たされているかどうかを確かめましょう。",
        "作業用の環境を分けておくと、手元のシステムを汚さずに何度でもやり直せます。",
        "アーキテクチャーを指定すると、別の種類の計算機向けのバイナリも作ることができます。",
        "並列に処理する数を増やせば、大きなパッケージでも待ち時間をかなり短くできます。",
        "出来上がったファイルは、アップロードする前に必ず検査用の道具で確認してください。",
        "変更の記録には日付と名前を書き、何をなぜ変えたのかを短く説明しておきます。",
        "古い版との違いは、差分を取る道具を使えば一目で分かるようになっています。",
        "分からないことがあれば、メーリングリストで質問すると親切に教えてもらえます。",
        "最後に、作ったパッケージを実際に入れてみて、正しく動くことを確かめてください。",
    ]
    prose = "".join(sentences[:6]), "".join(sentences[6:])
    tools = ["dpkg-buildpackage -us -uc", "lintian -i -I --show-overrides", "debuild -S -sa", "pbuilder build"]
    code = "\n".join(f"$ {tools[i % 4]} ../pkg{i}_{i}.{i * 7 % 10}-{i % 3}.dsc --jobs={i}" for i in range(code_lines))
    table = "| package | size |\n|---|---|\n" + "\n".join(f"| `libfoo{i}-dev` | {i * 1000} |" for i in range(30))
    return f"# パッケージの作成\n\n{prose[0]}\n\n```\n{code}\n```\n\n{table}\n\n{prose[1]}\n\nCopyright 2024 Someone."


def test_a_japanese_manual_is_kept_on_its_prose_and_loses_its_english_lines():
    from kamado.corpus.quality import QualityConfig, check_text
    from kamado.corpus.quality_filter import JapaneseQualityFilter

    page = _manual()
    assert check_text(page, QualityConfig(prose_only=False, min_block_japanese_frac=None))[0] == "low_japanese"
    doc = Document(text=page, id="manual")
    assert JapaneseQualityFilter(QualityConfig()).filter(doc) is True
    assert doc.metadata["blocks_cut"] == 1 and "Copyright" not in doc.text
    assert "--jobs=39" in doc.text and "| `libfoo29-dev` | 29000 |" in doc.text  # code and table kept


def test_a_mostly_english_page_with_a_japanese_menu_is_dropped():
    from kamado.corpus.quality import QualityConfig
    from kamado.corpus.quality_filter import JapaneseQualityFilter

    menu = "\n".join(
        f"- {item}" for item in ("ホーム", "製品情報", "会社概要", "採用情報", "お問い合わせ", "サイトマップ")
    )
    english = "This product page explains the features of our software and how to install it on Linux. " * 8
    doc = Document(text=f"{menu}\n\n{english}\n\n{english}", id="menu")
    assert JapaneseQualityFilter(QualityConfig()).filter(doc) == (False, "foreign_prose")


def test_real_debian_manual_pages(web_data):
    """debian-reference-ja ch11 (data conversion tools: tables of packages, commands) was dropped as low_japanese
    by the page-level rules; block-level keeps it. An untranslated English page of the aptitude manual stays out."""
    from kamado.corpus.extract import extract_main_text
    from kamado.corpus.quality import QualityConfig, check_text

    docs = web_data / "html" / "debian_docs_ja"
    ch11, _ = extract_main_text((docs / "debian-reference-ja" / "ch11.ja.html").read_text(encoding="utf-8"))
    assert check_text(ch11, QualityConfig(prose_only=False, min_block_japanese_frac=None))[0] == "low_japanese"
    assert check_text(ch11, QualityConfig())[0] is None
    english, _ = extract_main_text((docs / "aptitude-doc-ja" / "ch02s04s01.html").read_text(encoding="utf-8"))
    assert check_text(english, QualityConfig())[0] == "foreign_prose"
