"""Block-level Japanese rules: a page is judged on its prose, and non-Japanese prose blocks are cut out.

Page-level script rules misjudge technical pages: a Japanese manual whose code blocks, command tables and inline
command names are in ASCII falls under the Japanese-fraction threshold (`low_japanese`) and is dropped whole, while
its prose is plainly Japanese. Here the extracted Markdown is split into blocks:

| kind      | what                                          | counts as prose | non-Japanese ones                 |
|-----------|-----------------------------------------------|-----------------|-----------------------------------|
| code      | a fenced block (```) or 4-space indented lines | no              | kept (code is content)            |
| table     | lines starting with `|`                        | no              | kept                              |
| heading   | `#` lines                                      | yes             | cut (menus, English boilerplate)  |
| list      | `-`, `*`, `+` or `1.` items                    | yes             | cut                               |
| paragraph | the rest, up to a blank line                   | yes             | cut                               |

`prose_text` is the prose blocks with inline code spans and URLs removed: the language ID and the script rules
(`low_japanese`, `low_hiragana`, `high_katakana`) are computed on it, so a Japanese manual is judged on its Japanese
sentences and a mostly English page with a Japanese menu is judged on its English paragraphs (and dropped).
`cut_foreign_blocks` removes prose blocks with (almost) no Japanese (`japanese_fraction` below `min_fraction`):
navigation in English, copyright lines, untranslated boilerplate; the kept page reads as it did, minus those.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.typeshelper import StatHints

from kamado.corpus.quality_rules import char_stats

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^#{1,6}\s")
_LIST = re.compile(r"^\s*([-*+]|\d+[.)])\s+")
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_URL = re.compile(r"https?://\S+|www\.\S+")


@dataclass
class Block:
    kind: str  # "code", "table", "heading", "list", "paragraph"
    text: str

    @property
    def prose(self) -> bool:
        return self.kind in ("heading", "list", "paragraph")


def split_blocks(markdown: str) -> list[Block]:
    """The Markdown's blocks in order; joining their texts with blank lines gives the text back (up to blank
    lines)."""
    blocks: list[Block] = []
    lines = markdown.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif _FENCE.match(line):  # to the closing fence (or the end)
            j = i + 1
            while j < len(lines) and not _FENCE.match(lines[j]):
                j += 1
            blocks.append(Block("code", "\n".join(lines[i : j + 1])))
            i = j + 1
        elif line.startswith("    ") or line.startswith("\t"):
            j = i
            while j < len(lines) and (lines[j].startswith(("    ", "\t")) or not lines[j].strip()):
                j += 1
            blocks.append(Block("code", "\n".join(lines[i:j]).rstrip("\n")))
            i = j
        elif line.lstrip().startswith("|"):
            j = i
            while j < len(lines) and lines[j].lstrip().startswith("|"):
                j += 1
            blocks.append(Block("table", "\n".join(lines[i:j])))
            i = j
        elif _HEADING.match(line) or _LIST.match(line):
            blocks.append(Block("heading" if _HEADING.match(line) else "list", line))
            i += 1
        else:  # a paragraph: to a blank line or the start of another kind of block
            j = i + 1
            while j < len(lines) and lines[j].strip() and not _starts_block(lines[j]):
                j += 1
            blocks.append(Block("paragraph", "\n".join(lines[i:j])))
            i = j
    return blocks


def _starts_block(line: str) -> bool:
    return bool(_FENCE.match(line) or _HEADING.match(line) or _LIST.match(line) or line.lstrip().startswith("|"))


_MARKS = re.compile(r"[*_~#>|\\]|^\s*([-+]|\d+[.)])\s", re.M)  # emphasis, heading, quote and list marks


def _words(text: str) -> str:
    """A prose block without inline code, URLs, Markdown marks and whitespace: what its language is judged on."""
    return "".join(_MARKS.sub("", _URL.sub("", _INLINE_CODE.sub("", text))).split())


def japanese_fraction(text: str) -> float:
    """Share of Japanese characters (kana, kanji, Japanese punctuation) among the block's non-space characters,
    inline code and URLs left out; 0.0 when nothing is left."""
    words = _words(text)
    return char_stats(words)["japanese_frac"] if words else 0.0


def prose_text(markdown: str) -> str:
    """The prose blocks, inline code spans and URLs removed, one block a line: what the script rules judge."""
    kept = (_URL.sub("", _INLINE_CODE.sub("", b.text)) for b in split_blocks(markdown) if b.prose)
    return "\n".join(t for t in kept if t.strip())


def cut_foreign_blocks(markdown: str, min_fraction: float = 0.1) -> tuple[str, int]:
    """(the Markdown without its prose blocks whose Japanese fraction is under `min_fraction`, how many were cut).
    Code and table blocks are kept whatever their script."""
    blocks = split_blocks(markdown)
    kept = [b.text for b in blocks if not b.prose or not _words(b.text) or japanese_fraction(b.text) >= min_fraction]
    return "\n\n".join(kept), len(blocks) - len(kept)


class ForeignBlockCutter(PipelineStep):
    """Cuts non-Japanese prose blocks out of each document (stat `blocks_cut`; `metadata["blocks_cut"]`); a
    document left with no prose at all is dropped (`no_prose`)."""

    name = "✂ non-Japanese blocks"
    type = "✂️ - FORMAT"

    def __init__(self, min_fraction: float = 0.1):
        super().__init__()
        self.min_fraction = min_fraction

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if data is None:
            return
        for doc in data:
            self.stat_update(StatHints.total)
            with self.track_time():
                text, cut = cut_foreign_blocks(doc.text, self.min_fraction)
            if not prose_text(text):
                self.stat_update(StatHints.dropped, "no_prose")
                continue
            if cut:
                doc.text = text
                doc.metadata["blocks_cut"] = cut
                self.stat_update("blocks_cut", value=cut)
            self.stat_update(StatHints.forwarded)
            yield doc
