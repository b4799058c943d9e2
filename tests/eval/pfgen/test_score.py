"""The pfgen scorer: hand-computed n-gram and keyword scores, Python 3.12's float sum, and — where the shared data
is present — the three published `result.json` files reproduced from their `trials.jsonl.xz`, every number."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kamado.errors import DataError
from kamado.eval.pfgen.data import PfgenData
from kamado.eval.pfgen.keywords import helpfulness
from kamado.eval.pfgen.ngram import ReferenceNgrams
from kamado.eval.pfgen.score import QuestionScorer, compensated_sum, mean_std, score_trials

REPO = Path(__file__).resolve().parents[3]
SAMPLE = REPO / "samples" / "eval" / "pfgen"
SHARED = REPO.parent / "shared" / "data" / "benchmarks" / "pfgen_bench"
PUBLISHED = ["llm-jp/llm-jp-3-150m/c5abc69", "llm-jp/llm-jp-3-980m/8e2095b", "Qwen/Qwen3-0.6B-Base/f504bef"]


def test_ngram_scores_by_hand():
    """References "abc", "abd": df a=2 b=2 ab=2, c=d=bc=bd=abc=abd=1; each reference's best prefix gains
    2 + (2+2) + (1+1+1) = 9, the baseline. Truthfulness: only "abc" is a reference 3-gram here."""
    refs = ReferenceNgrams(["abc", "abd"])
    assert refs.baseline == 9.0
    assert refs.fluency(["abc", "abcabc", "ax", "", "xyz"]).tolist() == [1.0, 1.0, 2 / 9, 0.0, 0.0]
    # "abcxyz": a, b, c covered by "abc" (df 1 of 2 refs -> 1.0 each), x, y, z by nothing: 3 / 6
    assert refs.truthfulness(["abc", "xyz", "abcxyz", "", "。"]).tolist() == [1.0, 0.0, 0.5, 0.0, 0.0]


def test_ngram_length_discount():
    """Past 100 characters a prefix loses 1/50 per character: a 120-character reference copy peaks at 100."""
    ref = "あいうえおかきくけこ" * 12
    refs = ReferenceNgrams([ref])
    assert refs.fluency([ref[:100]])[0] > refs.fluency([ref + "x" * 80])[0] * 0.99
    assert refs.fluency(["x" * 300])[0] == 0.0


def test_keywords_by_hand():
    kw = [{"t": "東京"}, {"importance": 0.5, "t": "大阪"}]
    assert helpfulness("東京と大阪", kw) == (1.0, [])
    assert helpfulness("東京", kw) == (0.5, [["大阪", 0.5]])
    assert helpfulness("大阪", kw) == (0.0, [["東京", 0.0]])
    assert helpfulness("東京" + "あ" * 120, kw)[0] == 0.5
    assert helpfulness("東京大阪" + "あ" * 120, kw) == (1.0, [])
    long_late = "あ" * 110 + "東京大阪"  # complete at 114 characters: 1 - 14/50
    assert helpfulness(long_late, kw) == (pytest.approx(0.72), [["14字超過", pytest.approx(0.72)]])
    either = [{"or": [{"t": "北"}, {"t": "南"}], "name": "方角"}, {"and": [{"t": "東"}, {"t": "西"}]}]
    assert helpfulness("南", either) == (0.0, [["東", 0.0]])  # both missing: the first listed names it
    assert helpfulness("南東", either) == (0.0, [["西", 0.0]])  # "and" is complete where its last part is
    assert helpfulness("西と東の南", either) == (1.0, [])


def test_compensated_sum_is_python_312s():
    """A published answer (llm-jp-3-150m, Q37) averages 0.41424 with 3.12's sum, 0.41425 with a plain one."""
    fluency, truth = [0.207303, 0.17125, 0.192949], [0.225571, 0.220091, 0.225571]
    assert round((compensated_sum(fluency) + compensated_sum(truth) + 0.0) / 3, 5) == 0.41424
    plain = 0.0
    for x in fluency:
        plain += x
    assert round((plain + sum(truth[1:], truth[0]) + 0.0) / 3, 5) == 0.41425
    assert compensated_sum([0.1] * 10) == 1.0 and compensated_sum([1, 2]) == 3
    assert mean_std([1.0, 2.0, 3.0, 4.0]) == (2.5, 1.118)


def test_sample_scores_a_trials_file_and_refuses_unknown_questions(tmp_path):
    data = PfgenData(SAMPLE)
    q01 = data.question("Q01")
    ref = q01.answers["R"][0]
    lines = [{"question": q01.question, "answer": a} for a in (ref, "わかりません。", "")]
    path = tmp_path / "trials.jsonl"
    path.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
    result = score_trials(path, data, progress=False)
    assert result["num_trials"] == 3 and list(result["questions"]) == ["Q01"]
    q = result["questions"]["Q01"]
    assert q["samples"][0]["answer"] == ref and q["samples"][-1]["answer"] == ""
    assert q["samples"][0]["scores"]["average"] > 0.5 > q["samples"][-1]["scores"]["average"] == 0.0
    assert QuestionScorer(q01).score([ref])[0] == q["samples"][0]["scores"]
    path.write_text(json.dumps({"question": "存在しない質問", "answer": "x"}, ensure_ascii=False) + "\n")
    with pytest.raises(DataError, match="not in the pfgen data"):
        score_trials(path, data, progress=False)
    path.write_text("{not json\n")
    with pytest.raises(DataError, match=r"trials.jsonl:1"):
        score_trials(path, data, progress=False)


@pytest.fixture(scope="module")
def shared_scoring():
    if not SHARED.is_dir():
        pytest.skip("needs ../shared/data/benchmarks/pfgen_bench (the published trials)")
    return PfgenData(SHARED), {}


@pytest.mark.parametrize("model", PUBLISHED)
def test_published_result_reproduced(shared_scoring, model):
    """Every number of upstream's published result.json — overall score, its standard deviation, per-set fluency
    and truthfulness, helpfulness, lengths, each question's means and samples with their per-answer scores."""
    data, scorers = shared_scoring
    folder = SHARED / "results" / model
    published = json.loads((folder / "result.json").read_text(encoding="utf-8"))
    ours = score_trials(folder / "trials.jsonl.xz", data, progress=False, scorers=scorers)
    for key in ("score", "score_std", "length", "length_std", "num_trials", "scores"):
        assert ours[key] == published[key], key
    assert ours["metadata_hash"] == published["metadata_hash"] == data.metadata_hash()
    assert ours["input_hash"] == published["input_hash"]
    assert ours["questions"] == published["questions"]
    # the config.json now beside Qwen3's trials gained a key after its result was published
    assert {k: v for k, v in ours["config"].items() if k != "add_no_think"} == published["config"]
