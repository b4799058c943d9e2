"""Page → Markdown: the main content of an HTML page, keeping its structure; plain text passed through.

Markdown, not plain text, because headings, lists, tables and code blocks are structure a model should learn to
read and write; flattened to plain text, a table is a run of cells and a code block loses its indentation.
trafilatura (Barbaresi, ACL 2021) removes navigation, footers, ads and comments, and with
`output_format="markdown"` + `include_formatting=True` writes `#` headings, `-` lists, `|` tables and fenced code.

trafilatura sometimes keeps a sidebar instead of the main text: on the 29 ClueWeb09 shop pages in the shared data it
returns the same "人気ランキング" table for every page and misses each product's description (`favor_recall`
changes nothing there). When its output has almost no prose (`prose_chars`: text in sentences that end in 。！？!?
or a full stop, under `MIN_PROSE`), trafilatura's `baseline` extractor (the page's paragraph-like text) is tried,
and kept when it adds sentences the first output lacks (`extract_main_text`); `metadata["extractor"]` says which
was used.
Measured in LOG.md (session 9): the 29 shop pages switch, none of the 63 other Japanese pages do.

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


# A sentence: 8+ characters without a line break or table/menu bar, ending in a sentence mark.
_SENTENCE = re.compile(r"[^。！？!?.\n|│]{8,}?[。！？!?]|[^。！？!?.\n|│]{16,}?\.(?=\s|$)")
MIN_PROSE = 50  # characters of sentences: below this the extraction is taken for navigation or a sidebar


def prose_chars(text: str) -> int:
    """Characters of `text` that sit in sentences (menus, rankings and tables of names have none)."""
    return sum(len(m) for m in _SENTENCE.findall(text))


_SQUASH = re.compile(r"[\s\\*`|]+")  # whitespace and Markdown's escapes and marks: compare the words only


def missing_prose(text: str, markdown: str) -> int:
    """Characters of `text`'s sentences that `markdown` does not contain (whitespace and Markdown marks aside)."""
    have = _SQUASH.sub("", markdown)
    return sum(len(s) for s in _SENTENCE.findall(text) if _SQUASH.sub("", s) not in have)


def extract_main_text(html: str, url: str | None = None, fallback: bool = True) -> tuple[str, str]:
    """(Markdown of the main content, the extractor used: "trafilatura" or "baseline"); "" when none is found.

    The fallback replaces trafilatura's output only when that output has almost no prose and the baseline's text
    has sentences trafilatura left out (at least `MIN_PROSE` characters of them), so a screen dump or a code block
    that trafilatura kept as Markdown is not flattened into the same words on one line."""
    markdown = html_to_markdown(html, url)
    if not fallback or prose_chars(markdown) >= MIN_PROSE:
        return markdown, "trafilatura"
    import trafilatura

    text = tidy_markdown(trafilatura.baseline(html)[1] or "")
    if missing_prose(text, markdown) >= MIN_PROSE and prose_chars(text) >= 2 * prose_chars(markdown):
        return text, "baseline"
    return markdown, "trafilatura"


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


def _extract_request(request: dict[str, Any]) -> tuple[str, str]:
    """The function the sandbox child runs: {"html": ..., "url": ..., "fallback": ...} → (Markdown, extractor)."""
    return extract_main_text(request["html"], request.get("url"), request.get("fallback", True))


class MarkdownExtractor(PipelineStep):
    """HTML documents → Markdown (in a sandbox with a per-page deadline); plain-text documents tidied.

    Drops, each counted: `too_large` (HTML over `max_html_chars`), `timeout`, `extractor_crashed`,
    `extract_error` (trafilatura raised), `empty` (no main content found). Pages whose text came from the
    fallback extractor are counted as `fallback_baseline` (with `fallback`, see the module's docstring)."""

    name = "⛏ HTML → Markdown"
    type = "🛢 - EXTRAC"

    def __init__(self, timeout_s: float = 2.0, max_html_chars: int = 4_000_000, fallback: bool = True):
        super().__init__()
        self.timeout_s = timeout_s
        self.max_html_chars = max_html_chars
        self.fallback = fallback

    def warm_up(self) -> None:
        """Import trafilatura in the process that forks the workers (`kamado.corpus.pipeline`)."""
        import trafilatura  # noqa: F401

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        import trafilatura  # noqa: F401 - imported before the sandbox's fork, so each new child starts warm

        if data is None:
            return
        with TimeoutSandbox(_extract_request, self.timeout_s) as sandbox:
            for doc in data:
                self.stat_update(StatHints.total)
                with self.track_time():
                    extractor = "text"
                    if doc.metadata.get("kind") == "text":
                        text = tidy_markdown(doc.text)
                    elif len(doc.text) > self.max_html_chars:
                        self.stat_update(StatHints.dropped, "too_large")
                        continue
                    else:
                        try:
                            request = {"html": doc.text, "url": doc.metadata.get("url"), "fallback": self.fallback}
                            text, extractor = sandbox.call(request)
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
                if extractor != "text":
                    doc.metadata["extractor"] = extractor
                if extractor == "baseline":
                    self.stat_update("fallback_baseline")
                self.stat_update(StatHints.forwarded)
                self.update_doc_stats(doc)
                yield doc
