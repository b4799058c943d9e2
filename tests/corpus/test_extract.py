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
