"""pfgen-bench's helpfulness: are the question's keywords in the answer, early enough?

Upstream's `KeywordScorer` (pfnet-research/pfgen-bench @ 03db7c4), restated. A keyword is a regular expression
(`{"t": ...}`), all of several (`{"and": [...]}`: where the last of them ends) or any of several
(`{"or": [...]}`: where the first of them ends); each has an `importance` (default 1). For every cut `i` of the
answer's first 200 characters (i = 0..150: past 150 characters the length discount is negative and the cut is
not considered), the cut scores the length discount `1 − max(i − 100, 0) / 50` times `(1 − importance)` for each
keyword that does not end within the first `i` characters. The answer scores its best cut (the longest among
equals). Missing an important keyword thus scores 0; a keyword of importance 0.5 halves the score.

`results` lists, as upstream does, the keywords (by name) missing before the chosen cut with their factor, and
"N字超過" when the cut is past 100 characters.
"""

from __future__ import annotations

import re
from typing import Any

NOT_FOUND = 9999  # upstream's end position of a keyword that is not there


def keyword_end(answer: str, keyword: dict[str, Any]) -> tuple[int, str]:
    """(where the keyword is complete in `answer` — the end of its match, NOT_FOUND if never — and its name)."""
    if "t" in keyword:
        match = re.search(keyword["t"], answer)
        return (match.end() if match else NOT_FOUND), keyword.get("name", keyword["t"])
    if "and" in keyword:  # complete where the last part is; ties keep the listed order (a stable sort)
        parts = sorted((keyword_end(answer, k) for k in keyword["and"]), key=lambda x: -x[0])
        return parts[0][0], keyword.get("name", parts[0][1])
    if "or" in keyword:
        parts = sorted((keyword_end(answer, k) for k in keyword["or"]), key=lambda x: x[0])
        return parts[0][0], keyword.get("name", parts[0][1])
    raise ValueError(f"a keyword needs 't', 'and' or 'or': {keyword}")


def helpfulness(answer: str, keywords: list[dict[str, Any]]) -> tuple[float, list[list[Any]]]:
    """(score, [[missing keyword, factor], ...]) of an answer's first 200 characters."""
    answer = answer[:200]
    cuts = [1 - max(i - 100, 0) / 50 for i in range(len(answer) + 1)]
    cuts = [s for s in cuts if s >= 0]
    found = []
    for k in keywords:
        end, name = keyword_end(answer, k)
        factor = 1 - k.get("importance", 1.0)
        for i in range(min(len(cuts), end)):
            cuts[i] *= factor
        found.append((end, name, factor))
    best = max(reversed(range(len(cuts))), key=lambda i: cuts[i])  # the longest cut among equal scores
    results: list[list[Any]] = [[name, factor] for end, name, factor in found if best < end]
    if best > 100 and cuts[best] > 0:
        results.append([f"{best - 100}字超過", 1 - max(best - 100, 0) / 50])
    return cuts[best], results
