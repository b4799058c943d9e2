"""`kamado eval judge` end to end against real local HTTP servers: one answers as the evaluated model, one judges
(well, with malformed ratings, or with HTTP 500s). Every benchmark runs on a couple of questions from the repo's
samples/eval; the tests read the FastChat-format files back and count the requests the servers saw."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kamado.cli import main
from kamado.eval.judge.benchmarks import load_questions

from .conftest import SAMPLES, OpenAIServer, data_subset, failing_judge, good_judge, malformed_judge, stub_answer

MODEL, JUDGE = "kamado-stub", "judge-x"


def judge(
    out: Path, answers: OpenAIServer, judge: OpenAIServer, *benches: str, limit: int = 2, data: Path = SAMPLES
) -> int:
    argv = [
        "eval",
        "judge",
        "--endpoint",
        answers.url,
        "--model",
        MODEL,
        "--judge-url",
        judge.url,
        "--data-dir",
        str(data),
    ]
    argv += ["--judge-model", JUDGE, "--judge-retries", "0", "--limit", str(limit), "--out", str(out)]
    argv += ["--bootstrap", "20", "--no-progress"]
    for b in benches:
        argv += ["--bench", b]
    return main(argv)


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def report(out: Path, bench: str) -> dict[str, Any]:
    return json.loads((out / bench / f"report_{MODEL}.json").read_text(encoding="utf-8"))


def test_japanese_mt_bench_two_turns_with_reference_answers(tmp_path: Path, serve, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    answers, judge_srv = serve(stub_answer), serve(good_judge)
    data = data_subset(tmp_path / "data", "ja_mt_bench", "question.jsonl", [1, 71])  # coding and writing
    out = tmp_path / "out"
    assert judge(out, answers, judge_srv, "ja_mt_bench", data=data) == 0
    qs = load_questions("ja_mt_bench", data, 2)  # question 1 is coding: graded against the reference answer
    assert [q.category for q in qs] == ["coding", "writing"]

    # answers: FastChat model_answer records, turn 2 asked with the whole conversation so far
    recs = lines(out / "ja_mt_bench" / "model_answer" / f"{MODEL}.jsonl")
    assert [r["question_id"] for r in recs] == [q.question_id for q in qs]
    assert set(recs[0]) == {"question_id", "answer_id", "model_id", "choices", "tstamp"}
    assert recs[0]["model_id"] == MODEL and recs[0]["choices"][0]["index"] == 0
    assert [t[:12] for t in recs[0]["choices"][0]["turns"]] == ["STUB turn 1:", "STUB turn 2:"]
    second = next(r for r in answers.requests if len(r["messages"]) == 3)
    assert [m["role"] for m in second["messages"]] == ["user", "assistant", "user"]
    assert second["messages"][1]["content"].startswith("STUB turn 1")
    assert {r["temperature"] for r in answers.requests} == {0.0, 0.7}  # coding 0, writing 0.7 (FastChat)

    # judgments: 2 questions x 2 turns, FastChat single records, the prompts of FastChat's choice
    js = lines(out / "ja_mt_bench" / "model_judgment" / f"{JUDGE}_single.jsonl")
    assert len(js) == 4 == len(judge_srv.requests)
    assert set(js[0]) == {"question_id", "model", "judge", "user_prompt", "judgment", "score", "turn", "tstamp"}
    names = {(r["question_id"], r["turn"]): r["judge"][1] for r in js}
    assert names[(1, 1)] == "single-math-v1" and names[(1, 2)] == "single-math-v1-multi-turn"
    assert names[(71, 1)] == "single-v1" and names[(71, 2)] == "single-v1-multi-turn"
    q1t1 = next(r for r in js if (r["question_id"], r["turn"]) == (1, 1))
    assert qs[0].reference[0] in q1t1["user_prompt"] and "[参考回答の開始]" in q1t1["user_prompt"]
    q1t2 = next(r for r in js if (r["question_id"], r["turn"]) == (1, 2))
    assert qs[0].reference[1] in q1t2["user_prompt"] and qs[0].turns[1] in q1t2["user_prompt"]
    assert all(r["judge"][0] == JUDGE and r["model"] == MODEL for r in js)
    # the judge request: FastChat's system prompt + the filled template, temperature 0, 2048 tokens, the key
    req = judge_srv.requests[0]
    assert req["messages"][0] == {"role": "system", "content": "あなたは有益な助手です。"}
    assert req["temperature"] == 0 and req["max_tokens"] == 2048 and req["model"] == JUDGE
    assert req["auth"] == "Bearer sk-test"

    rep = report(out, "ja_mt_bench")
    assert rep["turns"] == {"1": 8.0, "2": 6.0} and rep["mean"] == 7.0
    assert (rep["judgments"], rep["scored"], rep["unparseable"], rep["errors"]) == (4, 4, 0, 0)
    assert rep["categories"] == {"coding": 7.0, "writing": 7.0}
    md = (out / f"judge_{MODEL}.md").read_text(encoding="utf-8")
    assert "| ja_mt_bench | 1-10 | 7.00 | 8.00 | 6.00 | 4 | 4 | 0 | 0 |" in md


def test_english_mt_bench_uses_fastchat_prompts_and_a_rerun_makes_no_calls(tmp_path: Path, serve) -> None:
    answers, judge_srv = serve(stub_answer), serve(good_judge)
    assert judge(tmp_path, answers, judge_srv, "mt_bench") == 0
    req = judge_srv.requests[0]
    assert req["messages"][0]["content"] == "You are a helpful assistant."
    assert req["messages"][1]["content"].startswith("[Instruction]\nPlease act as an impartial judge")
    first = {p: (tmp_path / "mt_bench" / p).read_text() for p in ("model_answer/kamado-stub.jsonl",)}
    n_answers, n_judged = len(answers.requests), len(judge_srv.requests)
    assert (n_answers, n_judged) == (4, 4)

    assert judge(tmp_path, answers, judge_srv, "mt_bench") == 0  # the rerun: answers read back, judgments cached
    assert (len(answers.requests), len(judge_srv.requests)) == (n_answers, n_judged)
    assert (tmp_path / "mt_bench" / "model_answer/kamado-stub.jsonl").read_text() == first[
        "model_answer/kamado-stub.jsonl"
    ]
    assert report(tmp_path, "mt_bench")["mean"] == 7.0 and report(tmp_path, "mt_bench")["new_judge_replies"] == 0

    assert judge(tmp_path, answers, judge_srv, "mt_bench", limit=3) == 0  # one more question: only its calls
    assert (len(answers.requests), len(judge_srv.requests)) == (n_answers + 2, n_judged + 2)


def test_rakuda_judges_both_orders_against_the_reference_answers(tmp_path: Path, serve) -> None:
    answers, judge_srv = serve(stub_answer), serve(good_judge)
    assert judge(tmp_path, answers, judge_srv, "rakuda") == 0
    js = lines(tmp_path / "rakuda" / "model_judgment" / f"{JUDGE}_pair.jsonl")
    assert len(js) == 2 * 3 and len(judge_srv.requests) == 12  # 2 questions x 3 references x 2 orders
    assert {r["model_2"] for r in js} == {"gpt-4-20230713", "gpt-3.5-turbo", "claude-2"}
    r = js[0]
    keys = {"question_id", "model_1", "model_2", "g1_winner", "g2_winner", "judge", "g1_user_prompt"}
    assert keys | {"g1_judgment", "g2_user_prompt", "g2_judgment", "turn", "tstamp"} == set(r)
    # g1 shows our answer first, g2 the reference's; the judge always picks the first: the orders disagree
    a1, a2 = r["g1_user_prompt"].index("STUB"), r["g2_user_prompt"].index("STUB")
    assert a1 < r["g1_user_prompt"].index("[アシスタント2の回答の開始]") < a2
    assert {(x["g1_winner"], x["g2_winner"]) for x in js} == {("model_1", "model_2")}
    assert judge_srv.requests[0]["messages"][0]["content"].startswith(
        "あなたは、回答の質をチェックするための審判員です"
    )

    rep = report(tmp_path, "rakuda")
    assert rep["versus"]["claude-2"] | {} == {
        "win": 0, "loss": 0, "tie": 2, "errors": 0, "win_rate": 0.0, "loss_rate": 0.0, "win_rate_adjusted": 0.5,
    }  # fmt: skip
    assert rep["battles"] == 12 and (rep["scored"], rep["unparseable"], rep["errors"]) == (12, 0, 0)
    bt = rep["bradley_terry"]
    assert bt["position_bias"] > 300  # all of it is position: the first-shown answer always won
    assert rep["rating"] == pytest.approx(1000, abs=1)
    assert "Bradley-Terry" in (tmp_path / f"judge_{MODEL}.md").read_text(encoding="utf-8")


def test_rakuda_battles_name_who_was_shown_first() -> None:
    from kamado.eval.judge.pairwise import rakuda_battles

    rec = {"question_id": "q", "model_1": "ours", "model_2": "ref", "g1_winner": "model_1", "g2_winner": "tie"}
    assert rakuda_battles([rec, {**rec, "g1_winner": "error", "g2_winner": "model_2"}]) == [
        {"model_a": "ours", "model_b": "ref", "winner": "model_a", "first": "ours", "question_id": "q"},
        {"model_a": "ours", "model_b": "ref", "winner": "tie", "first": "ref", "question_id": "q"},
        {"model_a": "ours", "model_b": "ref", "winner": "model_b", "first": "ref", "question_id": "q"},
    ]


def test_elyza_grades_with_its_task_aspects_and_no_call_for_an_empty_answer(tmp_path: Path, serve) -> None:
    answers, judge_srv = serve(stub_answer), serve(good_judge)
    assert judge(tmp_path, answers, judge_srv, "elyza100", limit=3) == 0
    qs = load_questions("elyza100", SAMPLES, 3)
    assert "熱意" in qs[0].turns[0]  # the stub answers it with "": grade 1 without a call (gpt4-autoeval)
    js = lines(tmp_path / "elyza100" / "model_judgment" / f"{JUDGE}_single.jsonl")
    assert [r["score"] for r in js] == [1, 4, 4] and len(judge_srv.requests) == 2
    prompt = js[1]["user_prompt"]
    assert qs[1].eval_aspect.strip() in prompt and qs[1].reference[0] in prompt and "STUB turn 1" in prompt
    assert judge_srv.requests[0]["messages"] == [{"role": "user", "content": prompt}]  # no system message
    rep = report(tmp_path, "elyza100")
    assert rep["scale"] == "1-5" and rep["mean"] == pytest.approx(3.0) and rep["turns"] == {"1": 3.0}


def test_a_judge_without_ratings_is_kept_as_minus_one_and_counted(tmp_path: Path, serve, capsys) -> None:
    answers, judge_srv = serve(stub_answer), serve(malformed_judge)
    assert judge(tmp_path, answers, judge_srv, "ja_mt_bench", "rakuda") == 0
    js = lines(tmp_path / "ja_mt_bench" / "model_judgment" / f"{JUDGE}_single.jsonl")
    assert [r["score"] for r in js] == [-1] * 4 and all("Rating: eight" in r["judgment"] for r in js)
    rep = report(tmp_path, "ja_mt_bench")
    assert (rep["judgments"], rep["scored"], rep["unparseable"], rep["errors"]) == (4, 0, 4, 0)
    assert rep["mean"] is None and rep["turns"] == {"1": None, "2": None}  # never averaged as zeros
    pair = lines(tmp_path / "rakuda" / "model_judgment" / f"{JUDGE}_pair.jsonl")
    assert {(r["g1_winner"], r["g2_winner"]) for r in pair} == {("error", "error")}
    rk = report(tmp_path, "rakuda")
    assert (rk["unparseable"], rk["errors"], rk["battles"], rk["bradley_terry"]) == (12, 0, 0, None)
    assert "| ja_mt_bench | 1-10 | - | - | - | 4 | 0 | 4 | 0 |" in capsys.readouterr().out
    calls = len(judge_srv.requests)
    assert judge(tmp_path, answers, judge_srv, "ja_mt_bench", "rakuda") == 0
    assert len(judge_srv.requests) == calls  # a reply without a rating is still a reply: cached


def test_judge_errors_are_kept_counted_and_asked_again(tmp_path: Path, serve) -> None:
    answers, down = serve(stub_answer), serve(failing_judge)
    assert judge(tmp_path, answers, down, "mt_bench", "rakuda", limit=1) == 0
    js = lines(tmp_path / "mt_bench" / "model_judgment" / f"{JUDGE}_single.jsonl")
    assert [(r["score"], r["judgment"]) for r in js] == [(-1, "$ERROR$")] * 2
    assert all("HTTP 500" in r["error"] and "the judge is down" in r["error"] for r in js)
    rep = report(tmp_path, "mt_bench")
    assert (rep["judgments"], rep["unparseable"], rep["errors"], rep["mean"]) == (2, 0, 2, None)
    rk = report(tmp_path, "rakuda")
    assert (rk["errors"], rk["unparseable"], rk["battles"]) == (6, 0, 0)
    assert len(down.requests) == 2 + 6

    up = serve(good_judge)  # the same output folder, a working judge: the failed calls are made again
    assert judge(tmp_path, answers, up, "mt_bench", "rakuda", limit=1) == 0
    assert len(up.requests) == 2 + 6
    assert report(tmp_path, "mt_bench")["mean"] == 7.0 and report(tmp_path, "rakuda")["battles"] == 6


def test_a_failed_answer_is_an_error_judgment_and_is_asked_again(tmp_path: Path, serve) -> None:
    def flaky(body: dict[str, Any]) -> str | tuple[int, str]:
        return (400, "rejected") if "熱意" not in body["messages"][-1]["content"] else ""  # 400: not retried

    answers, judge_srv = serve(flaky), serve(good_judge)
    argv = ["eval", "judge", "--endpoint", answers.url, "--model", MODEL, "--judge-url", judge_srv.url]
    argv += ["--judge-model", JUDGE, "--limit", "2", "--bench", "elyza100", "--out", str(tmp_path), "--no-progress"]
    assert main(argv) == 0
    recs = lines(tmp_path / "elyza100" / "model_answer" / f"{MODEL}.jsonl")
    assert [r["choices"][0]["turns"] for r in recs] == [[""], ["$ERROR$"]]
    js = lines(tmp_path / "elyza100" / "model_judgment" / f"{JUDGE}_single.jsonl")
    assert [(r["score"], r.get("error")) for r in js] == [(1, None), (-1, "no answer")]
    assert len(judge_srv.requests) == 0  # neither needed the judge
    asked = len(answers.requests)
    answers.reply = stub_answer
    assert main(argv) == 0
    assert len(answers.requests) == asked + 1  # only the failed answer is asked again
    assert [r["score"] for r in lines(tmp_path / "elyza100" / "model_judgment" / f"{JUDGE}_single.jsonl")] == [1, 4]


def test_user_errors_are_one_line(tmp_path: Path, serve, capsys) -> None:
    answers = serve(stub_answer)
    base = ["eval", "judge", "--endpoint", answers.url, "--model", MODEL, "--out", str(tmp_path), "--no-progress"]
    assert main([*base, "--bench", "ja_mt_bench"]) == 2
    assert "give the judge" in capsys.readouterr().err
    judge_args = ["--judge-url", "http://127.0.0.1:9/v1", "--judge-model", JUDGE, "--judge-retries", "0"]
    assert main([*base, "--judge-url", "http://127.0.0.1:9/v1", "--bench", "mt_bench"]) == 2
    assert "--judge-url needs --judge-model" in capsys.readouterr().err
    assert main([*base, "--judge-run", "runs/x", "--judge-model", "j", "--bench", "mt_bench"]) == 2
    assert "--judge-run serves the judge itself" in capsys.readouterr().err
    assert main([*base, *judge_args, "--bench", "nope"]) == 2
    assert "--bench: unknown nope" in capsys.readouterr().err
    assert main([*base, *judge_args, "--bench", "mt_bench", "--limit", "1"]) == 2  # nobody listens on port 9
    assert "judge endpoint" in capsys.readouterr().err
    assert main([*base, *judge_args, "--bench", "mt_bench", "--data-dir", str(tmp_path / "none")]) == 2
    assert "not found" in capsys.readouterr().err


def test_bench_takes_several_names_or_repeats() -> None:
    from kamado.cli import build_parser

    args = ["eval", "judge", "runs/x", "--bench", "ja_mt_bench", "rakuda", "--bench", "mt_bench", "--out", "o"]
    parsed = build_parser().parse_args(args)
    assert parsed.bench == ["ja_mt_bench", "rakuda", "mt_bench"] and parsed.models == ["runs/x"]
