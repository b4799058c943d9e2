"""HTML → Markdown keeps structure; the sandbox enforces the per-page deadline and survives crashes."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from datatrove.data import Document

from kamado.corpus.extract import MarkdownExtractor, html_to_markdown, tidy_markdown
from kamado.corpus.sandbox import SandboxCallFailed, SandboxCrashed, TimeoutSandbox, cpu_seconds

PARA = "<p>" + "これは本文の段落です。見出しや表と一緒に抽出されるべき内容が続きます。" * 4 + "</p>"
ARTICLE = f"""<html><head><title>t</title></head><body>
<nav><ul><li><a href="/">ホーム</a></li><li><a href="/a">会社概要</a></li></ul></nav>
<article><h1>大見出し</h1>{PARA}<h2>小見出し</h2>{PARA}
<ul><li>項目その一</li><li>項目その二</li></ul>
<pre><code>def f(x):
    return x + 1</code></pre>{PARA}
<table><tr><th>名前</th><th>値</th></tr><tr><td>幅</td><td>3</td></tr></table></article>
<footer>Copyright 2024 サンプル株式会社 All rights reserved.</footer></body></html>"""


def test_markdown_keeps_headings_lists_code_and_tables() -> None:
    md = html_to_markdown(ARTICLE)
    lines = md.splitlines()
    assert "# 大見出し" in lines and "## 小見出し" in lines
    assert "- 項目その一" in lines and "- 項目その二" in lines
    assert "```" in lines and "    return x + 1" in lines
    assert any(line.startswith("| 名前 | 値 |") for line in lines)
    assert "会社概要" not in md and "Copyright" not in md  # navigation and footer removed
    closing = max(i for i, line in enumerate(lines) if line == "```")
    assert lines[closing + 1] == ""  # a blank line after the code block


def test_tidy_markdown() -> None:
    assert tidy_markdown("a  \r\n\r\n\r\n\r\nb\x00\x07\t\n\n") == "a\n\nb"


def test_real_page_extracts_japanese_main_text(web_data: Path) -> None:
    md = html_to_markdown((web_data / "html" / "hukumusume.html").read_text(encoding="utf-8"))
    assert len(md) > 500 and "\ufffd" not in md


def _work(request: dict) -> str:
    if request.get("sleep"):
        time.sleep(request["sleep"])
    if request.get("spin"):
        end = time.monotonic() + request["spin"]
        while time.monotonic() < end:
            pass
    if request.get("die"):
        os._exit(1)
    if request.get("raise"):
        raise ValueError("bad page")
    return request["text"].upper()


def test_sandbox_timeout_crash_and_error_then_recovers() -> None:
    with TimeoutSandbox(_work, timeout_s=0.5) as sandbox:
        assert sandbox.call({"text": "ok"}) == "OK"
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            sandbox.call({"text": "x", "sleep": 30})
        assert time.monotonic() - start < 5
        assert sandbox.call({"text": "again"}) == "AGAIN"
        with pytest.raises(SandboxCrashed):
            sandbox.call({"text": "x", "die": True})
        with pytest.raises(SandboxCallFailed, match="ValueError: bad page"):
            sandbox.call({"text": "x", "raise": True})
        assert sandbox.call({"text": "\ud800 lone surrogate"}) == "\ud800 LONE SURROGATE"


@pytest.mark.skipif(cpu_seconds(os.getpid()) is None, reason="CPU-time deadlines need /proc (Linux)")
def test_sandbox_deadline_is_cpu_time() -> None:
    with TimeoutSandbox(_work, timeout_s=0.3, wall_factor=20) as sandbox:
        # waiting is not computing: 1 s of wall time but almost no CPU passes a 0.3 s deadline (a loaded machine
        # starving the child looks the same, and must not drop the page)
        assert sandbox.call({"text": "slept", "sleep": 1.0}) == "SLEPT"
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            sandbox.call({"text": "x", "spin": 30})  # computing: stopped after ~0.3 s of CPU, long before 6 s of wall
        assert time.monotonic() - start < 4
        assert sandbox.call({"text": "next"}) == "NEXT"


def test_extractor_step_counts_every_drop() -> None:
    docs = [
        Document(text=ARTICLE, id="html", metadata={"kind": "html"}),
        Document(text="平文の\r\n\r\n\r\n記録です。  ", id="text", metadata={"kind": "text"}),
        Document(text="<html><body><script>var x = 1;</script></body></html>", id="empty", metadata={"kind": "html"}),
        Document(text="<p>" + "長" * 2000 + "</p>", id="big", metadata={"kind": "html"}),
    ]
    step = MarkdownExtractor(timeout_s=10, max_html_chars=1000 + len(ARTICLE))
    out = {d.id: d.text for d in step(iter(docs))}
    assert set(out) == {"html", "text"}
    assert out["text"] == "平文の\n\n記録です。"
    assert step.stats["empty"].total == 1 and step.stats["too_large"].total == 1


def test_extractor_step_drops_a_page_past_its_deadline() -> None:
    step = MarkdownExtractor(timeout_s=0.001)  # CPU time is counted in 10 ms ticks: the page needs far more
    assert list(step(iter([Document(text=ARTICLE * 200, id="slow", metadata={"kind": "html"})]))) == []
    assert step.stats["timeout"].total == 1


SHOP_PAGE = Path(__file__).parent / "pages" / "clueweb09_shop_page.html"  # a real ClueWeb09 page (pages/SOURCES.md)


def test_prose_counts_sentences_not_menus_tables_or_names() -> None:
    from kamado.corpus.extract import missing_prose, prose_chars

    assert prose_chars("| １位 |\n| マージ 長財布 Ｌ パンチングレザー |\n- ホーム\n- 会社概要") == 0
    assert prose_chars("HOME │ 会社紹介 │ お問合せ？") == 0  # a menu bar's last item is no sentence
    sentence = "この鞄にはノートパソコンが入ります。"  # 18 characters with its 。
    assert prose_chars(f"見出し\n{sentence}\n短い。") == len(sentence)  # 短い。 is under 8 characters
    english = "This page explains the options of the program in detail."
    assert prose_chars(english) == len(english)
    assert missing_prose(sentence + sentence, "# 題\n\nこの鞄には\nノートパソコンが**入ります**。") == 0
    assert missing_prose(sentence + "別の文がここにあって抜けている。", sentence) == len(
        "別の文がここにあって抜けている。"
    )


def test_a_sidebar_only_extraction_falls_back_to_the_page_text() -> None:
    """trafilatura keeps this shop page's ranking sidebar and misses the product description; the fallback finds it."""
    from kamado.corpus.extract import extract_main_text

    page = SHOP_PAGE.read_text(encoding="utf-8")
    description = "Ａ４ノートサイズのノートパソコンが収納可能なＰＣ対応のブリーフケース"
    first = html_to_markdown(page)
    assert "人気ランキング" in first and description not in first  # what trafilatura alone returns
    assert extract_main_text(page, fallback=False) == (first, "trafilatura")
    text, used = extract_main_text(page)
    assert used == "baseline" and description in text and "（縦２９ｃｍ 横４０ｃｍ 奥行８.５ｃｍ）" in text


def test_the_fallback_leaves_good_extractions_and_flattened_screens_alone() -> None:
    from kamado.corpus.extract import extract_main_text

    assert extract_main_text(ARTICLE)[1] == "trafilatura"  # plenty of prose: the fallback is never tried
    screen = """<html><body><div><p>画面の例:</p><pre> Actions  Undo  Package  Search  Options  Views  Help
f10: Menu  ?: Help  q: Quit  u: Update  g: Download/Install/Remove Pkgs
aptitude 0.2.14.1      Will use 2925kB of disk space  DL Size: 1375kB
--\\ Packages being automatically installed to satisfy dependencies
piA kaffeine                        +2843kB none     0.4.3-1</pre></div></body></html>"""
    md, used = extract_main_text(screen)  # little prose, but the page has no sentence the Markdown lacks
    assert used == "trafilatura" and "f10: Menu  ?: Help" in md  # the screen keeps its line breaks


def test_the_extractor_step_records_which_extractor_it_used() -> None:
    page = SHOP_PAGE.read_text(encoding="utf-8")
    docs = [Document(text=page, id="shop"), Document(text=ARTICLE, id="article")]
    step = MarkdownExtractor(timeout_s=30)
    out = {d.id: d for d in step.run(iter(docs))}
    assert out["shop"].metadata["extractor"] == "baseline" and out["article"].metadata["extractor"] == "trafilatura"
    assert step.stats["fallback_baseline"].total == 1
    off = MarkdownExtractor(timeout_s=30, fallback=False)
    assert [d.metadata["extractor"] for d in off.run(iter([Document(text=page, id="shop")]))] == ["trafilatura"]
