"""Block-level Japanese rules: a page is judged on its prose, and non-Japanese prose blocks are cut out.

Page-level script rules misjudge technical pages: a Japanese manual whose code blocks, command tables and inline
command names are in ASCII falls under the Japanese-fraction threshold (`low_japanese`) and is dropped whole, while
its prose is plainly Japanese. Here the extracted Markdown is split into blocks:

| kind      | what                                          | counts as prose | non-Japanese ones                 |
|-----------|-----------------------------------------------|-----------------|-----------------------------------|
| code      | fenced (```), 4-space indented, or a paragraph that `looks_like_code` | no | kept (it is content) |
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
            text = "\n".join(lines[i:j])
            blocks.append(Block("code" if looks_like_code(text) else "paragraph", text))
            i = j
    return blocks


_PROMPT = re.compile(r"^\s*(\$|#|>>>|%) \S", re.M)  # a shell or Python prompt at the start of a line
_SYMBOLS = re.compile(r"[^\w\s\u3000-\u30ff\u4e00-\u9fff\uff00-\uffef.,;:!?'\"()-]")


def looks_like_code(text: str) -> bool:
    """A paragraph that is really code trafilatura did not fence: a prompt line, or more than 8 % of its
    non-space characters are symbols (`$ / = { } [ ] < > | & * \\ ...`) that English or Japanese prose rarely
    uses (0-3 % in prose)."""
    if _PROMPT.search(text):
        return True
    plain = re.sub(r"[*\\]", "", _URL.sub("", _INLINE_CODE.sub("", text)))  # Markdown's own marks aside
    chars = len("".join(plain.split()))
    return chars > 0 and len(_SYMBOLS.findall(plain)) > 0.08 * chars


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


def foreign_prose_fraction(markdown: str, min_fraction: float = 0.1) -> float:
    """Share of the prose characters (as `japanese_fraction` counts them) in blocks under `min_fraction`."""
    sizes = [(len(_words(b.text)), japanese_fraction(b.text) < min_fraction) for b in split_blocks(markdown) if b.prose]
    sizes = [(n, foreign) for n, foreign in sizes if n]
    total = sum(n for n, _ in sizes)
    return sum(n for n, foreign in sizes if foreign) / total if total else 0.0
