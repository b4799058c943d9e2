"""Page → Markdown: the main content of an HTML page, keeping its structure; plain text passed through.

Markdown, not plain text, because headings, lists, tables and code blocks are structure a model should learn to
read and write; flattened to plain text, a table is a run of cells and a code block loses its indentation.
trafilatura (Barbaresi, ACL 2021) removes navigation, footers, ads and comments, and with
`output_format="markdown"` + `include_formatting=True` writes `#` headings, `-` lists, `|` tables and fenced code.

Each HTML page is extracted in a `TimeoutSandbox` child, so a page that needs more than `timeout_s` of CPU time
(or five times that of wall time) is dropped (stat `timeout`) instead of stalling the worker; a page that crashes
the child is dropped (`extractor_crashed`) and the child is replaced. Plain-text documents
(`metadata["kind"] == "text"`) skip the sandbox: there is nothing to parse, only line endings and blank lines to tidy.
"""

from __future__ import annotations

import re
from typing import Any

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.typeshelper import StatHints

from kamado.corpus.sandbox import SandboxCallFailed, SandboxCrashed, TimeoutSandbox

_TRAILING_SPACE = re.compile(r"[ \t]+$", re.M)
_BLANK_RUNS = re.compile(r"\n{3,}")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")


def tidy_markdown(text: str) -> str:
    """Unix newlines, no control characters or trailing spaces, at most one blank line in a row."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = _TRAILING_SPACE.sub("", text)
    return _BLANK_RUNS.sub("\n\n", text).strip()


def _separate_code_fences(markdown: str) -> str:
    """trafilatura writes a closing ``` directly followed by the next paragraph; Markdown wants a blank line.
    Only closing fences are touched: fences alternate open/close, and an opening one is followed by code."""
    out: list[str] = []
    inside = False
    for line in markdown.split("\n"):
        if out and not inside and out[-1] == "```" and line.strip():
            out.append("")
        if line.startswith("```"):
            inside = not inside
        out.append(line)
    return "\n".join(out)


def html_to_markdown(html: str, url: str | None = None) -> str:
    """The main content of `html` as Markdown ("" when trafilatura finds none)."""
    import trafilatura

    markdown = trafilatura.extract(
        html,
        url=url,
        output_format="markdown",
        include_formatting=True,
        include_tables=True,
        include_links=False,
        include_images=False,
        include_comments=False,
        deduplicate=False,
        with_metadata=False,
    )
    return tidy_markdown(_separate_code_fences(markdown or ""))


def _extract_request(request: dict[str, Any]) -> str:
    """The function the sandbox child runs: {"html": ..., "url": ...} → Markdown."""
    return html_to_markdown(request["html"], request.get("url"))


class MarkdownExtractor(PipelineStep):
    """HTML documents → Markdown (in a sandbox with a per-page deadline); plain-text documents tidied.

    Drops, each counted: `too_large` (HTML over `max_html_chars`), `timeout`, `extractor_crashed`,
    `extract_error` (trafilatura raised), `empty` (no main content found)."""

    name = "⛏ HTML → Markdown"
    type = "🛢 - EXTRAC"

    def __init__(self, timeout_s: float = 2.0, max_html_chars: int = 4_000_000):
        super().__init__()
        self.timeout_s = timeout_s
        self.max_html_chars = max_html_chars

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        import trafilatura  # noqa: F401 - imported before the fork, so each new child starts warm

        if data is None:
            return
        with TimeoutSandbox(_extract_request, self.timeout_s) as sandbox:
            for doc in data:
                self.stat_update(StatHints.total)
                with self.track_time():
                    if doc.metadata.get("kind") == "text":
                        text = tidy_markdown(doc.text)
                    elif len(doc.text) > self.max_html_chars:
                        self.stat_update(StatHints.dropped, "too_large")
                        continue
                    else:
                        try:
                            text = sandbox.call({"html": doc.text, "url": doc.metadata.get("url")})
                        except TimeoutError:
                            self.stat_update(StatHints.dropped, "timeout")
                            continue
                        except SandboxCrashed:
                            self.stat_update(StatHints.dropped, "extractor_crashed")
                            continue
                        except SandboxCallFailed:
                            self.stat_update(StatHints.dropped, "extract_error")
                            continue
                if not text:
                    self.stat_update(StatHints.dropped, "empty")
                    continue
                doc.text = text
                self.stat_update(StatHints.forwarded)
                self.update_doc_stats(doc)
                yield doc
