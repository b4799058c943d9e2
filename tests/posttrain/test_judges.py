"""Judges and on-policy pairs: ratings parsed from a real HTTP endpoint, endpoint failures named, best-vs-worst
pairing with ties and missing verdicts counted, seeded sampling."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

import pytest

from kamado.errors import ConfigError
from kamado.posttrain.config import DPOConfig, JudgeConfig
from kamado.posttrain.judge import EndpointJudge, parse_rating
from kamado.posttrain.onpolicy import sample_pairs

from .conftest import small_model


def test_parse_rating_takes_the_last_rating_in_range():
    assert parse_rating("good. Rating: [[7]]") == 7.0
    assert parse_rating("[[2]] at first, then Rating: [[8.5]]") == 8.5
    assert parse_rating("Rating: [[11]]") is None and parse_rating("Rating: 7") is None
    assert parse_rating("[[0]]") is None and parse_rating("[[1]]") == 1.0 and parse_rating("[[10]]") == 10.0


class _Judge(BaseHTTPRequestHandler):
    seen: ClassVar[list] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Judge.seen.append((self.path, self.headers.get("Authorization"), body))
        text = body["messages"][0]["content"]
        if "401" in text:
            self.send_response(401)
            self.end_headers()
            return
        reply = "Rating: [[9]]" if "東京" in text else ("no rating" if "不明" in text else "Rating: [[3]]")
        out = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


@pytest.fixture
def endpoint():
    server = HTTPServer(("127.0.0.1", 0), _Judge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()


def test_endpoint_judge_grades_over_http_with_the_key_from_the_environment(endpoint, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "s3cret")
    judge = EndpointJudge(JudgeConfig(kind="endpoint", base_url=endpoint, model="grader", api_key_env="JUDGE_KEY"))
    record = {"messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "日本の首都は？"}]}
    assert judge.score(record, "東京です。") == 9.0
    assert judge.score(record, "大阪です。") == 3.0
    assert judge.score(record, "不明") is None  # no rating in the reply: no verdict, not a made-up score
    path, auth, body = _Judge.seen[-1]
    assert path == "/v1/chat/completions" and auth == "Bearer s3cret" and body["model"] == "grader"
    assert "日本の首都は？" in body["messages"][0]["content"] and "sys" not in body["messages"][0]["content"]
    with pytest.raises(ConfigError, match=r"HTTP 401"):
        judge.score(record, "401")


def test_an_unreachable_or_unset_endpoint_is_a_config_error():
    with pytest.raises(ConfigError, match=r"base_url and dpo\.judge\.model"):
        EndpointJudge(JudgeConfig(kind="endpoint"))
    judge = EndpointJudge(JudgeConfig(kind="endpoint", base_url="http://127.0.0.1:9/v1", model="m", timeout_s=2))
    with pytest.raises(ConfigError, match=r"127.0.0.1:9/v1/chat/completions cannot be reached"):
        judge.score({"messages": [{"role": "user", "content": "q"}]}, "a")


def _checksum(text: str) -> float:
    return float(sum(map(ord, text)) % 1009)


class _ChecksumJudge:
    """Scores an answer by a checksum of its text (distinct answers score apart), except for prompts marked 'tie'
    (every answer 1) or 'none' (no verdicts)."""

    def score(self, record, answer):
        kind = record["kind"]
        return None if kind == "none" else (1.0 if kind == "tie" else _checksum(answer))


def test_on_policy_pairs_are_the_best_against_the_worst_with_ties_and_no_verdicts_counted(tok):
    model = small_model(tok.vocab_size, max_seq_len=128)
    prompts = [
        {"messages": [{"role": "user", "content": f"問{i}"}], "kind": kind}
        for i, kind in enumerate(["len", "tie", "none", "len", "len"])
    ]
    cfg = DPOConfig(samples_per_prompt=3, max_new_tokens=12, temperature=1.0)
    pairs, counts = sample_pairs(model, tok, prompts, 10, _ChecksumJudge(), cfg, seed=4, progress=False)
    assert counts["tie: every answer scored alike"] == 1
    assert counts["fewer than two judged answers"] == 1 and counts["answers without a verdict"] == 3
    assert len(pairs) + counts["tie: every answer scored alike"] + counts["fewer than two judged answers"] == 5
    for p in pairs:
        assert p["scores"] == [_checksum(p["chosen"]), _checksum(p["rejected"])] and p["scores"][0] > p["scores"][1]
        assert p["source"] == "on_policy" and p["prompt"][-1]["role"] == "user"
    again, _ = sample_pairs(model, tok, prompts, 10, _ChecksumJudge(), cfg, seed=4, progress=False)
    assert again == pairs  # seeded: the same policy gives the same pairs
    fewer, _ = sample_pairs(model, tok, prompts, 1, _ChecksumJudge(), cfg, seed=4, progress=False)
    assert len(fewer) == 1


def test_verifiable_judge_ranks_right_over_wrong_label_over_malformed():
    from kamado.posttrain.judge import VerifiableJudge

    judge = VerifiableJudge()
    nli = {"answer": "entailment", "label_list": ["entailment", "contradiction", "neutral"], "metric": "exact_match"}
    assert judge.score(nli, "entailment") == 1.0
    assert judge.score(nli, "ｅｎｔａｉｌｍｅｎｔ") == 1.0  # NFKC, as the evaluation normalises
    assert judge.score(nli, "entailment\n\nbecause ...") == 1.0  # cut at the first blank line
    assert judge.score(nli, "neutral") == 0.5  # a label, the wrong one
    assert judge.score(nli, "I think entailment") == 0.0  # not in the format
    assert judge.score({"answer": "42", "metric": "exact_match"}, "41") == 0.0  # no labels: wrong is just wrong
    qa = {"answer": "東京都", "metric": "char_f1"}
    assert judge.score(qa, "東京都") == 1.0 and judge.score(qa, "大阪") == 0.0
    assert judge.score(qa, "東京") == pytest.approx(0.8)  # 1 − (2 + 3 − 2·2) / 5
    sts = {"answer": "4.0", "metric": "pearson"}
    assert judge.score(sts, "3.0") == pytest.approx(0.8) and judge.score(sts, "とても似ている") == 0.0
