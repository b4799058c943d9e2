"""jaster tasks (llm-jp-eval v1.3 semantics): splits built from the real benchmark files, the prompt, the metrics.

The real files live in the shared folder beside the repository (../shared/data/benchmarks); the tests that need
them are skipped in a clone without it. The metric and prompt tests use hand-worked values and run anywhere.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from kamado.errors import DataError
from kamado.eval.jaster import TASK_NAMES, TASKS, Sample, Task, load_task
from kamado.eval.jaster.metrics import (
    _average_ranks,
    char_f1,
    exact_match,
    lcs_length,
    normalize_answer,
    parse_float,
    pearson,
    sample_score,
    spearman,
)
from kamado.eval.jaster.prompt import alpaca_prompt, render_alpaca, system_message, task_messages

BENCHMARKS = (Path(__file__).parents[2] / "../shared/data/benchmarks").resolve()
OVERLAP = "train input also in dev/test (left out of train)"

# (train, dev, test) as v1.3 cuts them, worked out from the raw counts (before our train-overlap guard):
V13_SIZES = {
    "jamp": (8955, 995, 348),  # train_all.tsv 9,950 rows: int(0.9·9950) / rest; test_2.tsv 348 rows
    "janli": (12312, 1368, 720),  # 13,680 'train' rows cut 90/10; 720 'test' rows
    "jnli": (0, 0, 2434),  # no JGLUE train file offline; valid 2,434
    "jsem": (12667, 1583, 1584),  # 15,834 problems answered yes/no/unknown/undef, cut 80/10/10
    "jsick": (4500, 500, 4927),  # train.tsv 5,000 rows; test.tsv 4,927
    "jemhopqa": (953, 106, 120),  # train.json 1,059; dev.json 120
    "niilc": (715, 80, 198),  # 800 − 5 answered '-' = 795 cut 90/10; 200 − 2 = 198
    "jsquad": (0, 0, 4442),  # valid: 4,442 questions
    "jcommonsenseqa": (8045, 894, 1119),  # train 8,939 cut 90/10; valid 1,119
    "jmmlu": (32, 3524, 3541),  # 7,097 rows: dev pool Σ n//2 = 3,540, test pool 3,557; 16 + 16 to train
    "mawps": (8, 500, 500),  # 8 shot examples; 1,000 test problems cut 50/50
    "jsts": (11205, 1246, 1457),  # train 12,451 cut 90/10; valid 1,457
}


@pytest.fixture(scope="module")
def loaded(bench: Path) -> dict:
    return {name: load_task(name, bench) for name in TASK_NAMES}


def test_the_twelve_v13_tasks_in_their_categories() -> None:
    assert {n: t.category for n, t in TASKS.items()} == {
        **dict.fromkeys(["jamp", "janli", "jnli", "jsem", "jsick"], "NLI"),
        **dict.fromkeys(["jemhopqa", "niilc"], "QA"),
        **{"jsquad": "RC", "jcommonsenseqa": "MC", "jmmlu": "HE", "mawps": "MR", "jsts": "STS"},
    }
    assert TASKS["jsts"].metrics == ("pearson", "spearman")
    assert {n for n, t in TASKS.items() if t.metrics == ("char_f1",)} == {"jemhopqa", "niilc", "jsquad"}


@pytest.mark.parametrize("name", TASK_NAMES)
def test_split_sizes_are_v13s(loaded: dict, name: str) -> None:
    data = loaded[name]
    train, dev, test = V13_SIZES[name]
    assert len(data.train) + data.dropped.get(OVERLAP, 0) == train
    assert (len(data.dev), len(data.test)) == (dev, test)


def test_no_dev_or_test_input_is_in_train(loaded: dict) -> None:
    for name, data in loaded.items():
        held = {s.input for s in data.dev} | {s.input for s in data.test}
        assert not held & {s.input for s in data.train}, name
    # the upstream files do repeat inputs across their splits: the guard is what keeps them out
    assert {n: d.dropped[OVERLAP] for n, d in loaded.items() if OVERLAP in d.dropped} == {
        "janli": 33,
        "jsem": 12,
        "jsick": 101,
        "jsts": 2,
    }


def test_outputs_are_labels_and_every_label_occurs(loaded: dict) -> None:
    for name, data in loaded.items():
        labels = set(data.task.label_list)
        if not labels:
            continue
        outputs = [s.output for split in ("train", "dev", "test") for s in data.split(split)]
        assert set(outputs) <= labels, name
        assert {s.output for s in data.test} == labels, name


def test_jsts_outputs_are_similarities_as_python_writes_them(loaded: dict) -> None:
    outputs = [s.output for s in loaded["jsts"].train + loaded["jsts"].test]
    assert all(re.fullmatch(r"[0-5]\.\d", o) for o in outputs)
    assert {"0.0", "5.0", "4.2"} <= set(outputs)
    assert all(s.input.startswith("文1：") and "\n文2：" in s.input for s in loaded["jsts"].test)


def test_samples_are_v13s_seed_42_shuffles_and_deterministic(bench: Path, loaded: dict) -> None:
    # the first train sample after v1.3's random.seed(42); random.shuffle(...) of train_all.tsv
    assert loaded["jamp"].train[0] == Sample(
        "前提：8月以来、ゾーイは雑誌に発表している。現在、10月である。\n仮説：ゾーイは9月には雑誌に発表していた。",
        "entailment",
    )
    # upstream test files keep their order
    assert (
        loaded["jamp"].test[0].input
        == "前提：ボブは選挙に撤回を表明している。\n仮説：ボブは現在選挙に撤回を表明している。"
    )
    assert load_task("jsem", bench) == loaded["jsem"]


def test_inputs_are_built_as_v13_builds_them(loaded: dict) -> None:
    jsem = {s.input: s.output for s in loaded["jsem"].train + loaded["jsem"].dev + loaded["jsem"].test}
    # two <p> premises are joined without a separator
    assert jsem["前提：ジョンはアメリカ人だ。ジョンは外科医だ。\n仮説：ジョンはアメリカ人の外科医だ。"] == "yes"
    jcqa = loaded["jcommonsenseqa"].test[0]
    assert jcqa.input == (
        "質問：電子機器で使用される最も主要な電子回路基板の事をなんと言う？\n"
        "選択肢：0.掲示板,1.パソコン,2.マザーボード,3.ハードディスク,4.まな板"
    )
    assert jcqa.output == "2"
    squad = loaded["jsquad"].test[0]
    assert squad.input.startswith("文章：梅雨 [SEP] 梅雨（つゆ、ばいう）は")
    assert squad.input.endswith("\n質問：日本で梅雨がないのは北海道とどこか。") and squad.output == "小笠原諸島"
    raw = json.loads((BENCHMARKS / "jglue/jsquad-v1.3/valid-v1.3.json").read_text(encoding="utf-8"))
    firsts = [qa["answers"][0]["text"] for a in raw["data"] for p in a["paragraphs"] for qa in p["qas"]]
    assert [s.output for s in loaded["jsquad"].test] == firsts  # the first of the annotated answers
    niilc = {s.input: s.output for s in loaded["niilc"].train + loaded["niilc"].dev}
    assert niilc["質問：ワールドカップは何年に一度開催されるの？"] == "4年"
    # several answers joined by ','; each stripped (the XML has '玉将 ', 'コッポラ\u3000'); empty ones skipped
    assert niilc["質問：将棋の駒にはどのような種類の駒があるか？"] == "玉将,王将,飛車,角行,金将,銀将,桂馬,香車,歩兵"
    assert niilc["質問：焼き物で有名な市は？"] == "瀬戸,有田,信楽"
    assert niilc["質問：映画「ゴッドファーザー」の監督は？"] == "フランシス・フォード・コッポラ"
    assert not any(",," in o or o.endswith(",") for o in niilc.values())
    mawps = loaded["mawps"]
    assert mawps.train[0] == Sample(
        "問題：佐藤は16個の青い風船、鈴木は11個の青い風船、高橋は99個の青い風船を持っています。"
        "彼らは全部でいくつの青い風船を持っているのでしょう？",
        "126",
    )
    assert all(s.input.startswith("問題：") and "解答" not in s.input for s in mawps.dev + mawps.test)
    jmmlu = loaded["jmmlu"].test[0].input
    assert re.fullmatch(r"質問：.+\n選択肢：A\..*,B\..*,C\..*,D\..*", jmmlu, re.S)
    assert loaded["jemhopqa"].test[0].input.startswith("質問：『ダンガンロンパ")


def _copy_task_files(bench: Path, dest: Path, task: Task) -> None:
    for rel in task.sources:
        for src in bench.glob(rel):
            (dest / src.relative_to(bench)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dest / src.relative_to(bench))


def test_a_missing_or_malformed_file_is_one_data_error_naming_it(bench: Path, tmp_path: Path) -> None:
    _copy_task_files(bench, tmp_path, TASKS["jamp"])
    tsv = tmp_path / "jamp/test_2.tsv"
    text = tsv.read_text(encoding="utf-8")
    tsv.unlink()
    with pytest.raises(DataError, match=r"jamp/test_2\.tsv: file not found"):
        load_task("jamp", tmp_path)
    tsv.write_text(text, encoding="utf-8")
    tsv.write_text(tsv.read_text(encoding="utf-8") + "999\tonly two cells\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"jamp/test_2\.tsv:350: 2 tab-separated cells"):
        load_task("jamp", tmp_path)
    _copy_task_files(bench, tmp_path, TASKS["jnli"])
    (tmp_path / "jglue/jnli-v1.3/valid-v1.3.json").write_text('{"sentence1": "a", "sentence2": "b", "label": "x"}\n{')
    with pytest.raises(DataError, match=r"valid-v1\.3\.json:2: invalid JSON"):
        load_task("jnli", tmp_path)
    (tmp_path / "jglue/jnli-v1.3/valid-v1.3.json").write_text('{"sentence1": "a", "label": "neutral"}\n')
    with pytest.raises(DataError, match=r"valid-v1\.3\.json:1: missing field 'sentence2'"):
        load_task("jnli", tmp_path)
    _copy_task_files(bench, tmp_path, TASKS["niilc"])
    (tmp_path / "niilc/NIILC-ECQA2015_test.xml").write_text("<questions><question>", encoding="utf-8")
    with pytest.raises(DataError, match=r"NIILC-ECQA2015_test\.xml: malformed XML"):
        load_task("niilc", tmp_path)


def test_unusable_records_are_counted_not_used(tmp_path: Path) -> None:
    head = "num\tpremise\thypothesis\tgold_label\ttemplate_num\ttime_format\ttime_span\tcategory\n"
    rows = ["1\tP\tH\tentailment\t0\tx\tx\tx", "2\tP2\tH2\t\t0\tx\tx\tx", "3\tP3\tH3\tmaybe\t0\tx\tx\tx"]
    (tmp_path / "jamp").mkdir()
    (tmp_path / "jamp/train_all.tsv").write_text(head + "\n".join(rows) + "\n", encoding="utf-8")
    (tmp_path / "jamp/test_2.tsv").write_text(head + "1\tP\tH\t \t0\tx\tx\tx\n", encoding="utf-8")
    data = load_task("jamp", tmp_path)
    assert dict(data.dropped) == {
        "empty output (train file)": 1,
        "empty output (test file)": 1,
        "output not in label_list (train)": 1,
    }
    assert data.train + data.dev == (Sample("前提：P\n仮説：H", "entailment"),) and data.test == ()


# ---------------------------------------------------------------------------------------------------------------
# The prompt: v1.3's Alpaca-style text, as chat messages.

TOY = Task("toy", "QA", "INST", 5, ("exact_match",))


def test_messages_map_v13s_blocks_to_roles_and_back_to_its_exact_text() -> None:
    shots = [Sample("q1", "a1")]
    messages = task_messages(TOY, "q2", shots)
    preamble = "以下は、タスクを説明する指示と、文脈のある入力の組み合わせです。要求を適切に満たす応答を書きなさい。"
    assert messages == [
        {"role": "system", "content": preamble + "\n\n### 指示:\nINST"},
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"},
    ]
    expected = preamble + "\n\n### 指示:\nINST\n\n### 入力:\nq1\n\n### 応答:\na1\n\n### 入力:\nq2\n\n### 応答:\n"
    assert alpaca_prompt(TOY, "q2", shots) == expected
    # a finished conversation (SFT) renders without an open response block
    assert render_alpaca([*task_messages(TOY, "q"), {"role": "assistant", "content": "a"}]).endswith("応答:\na")
    assert task_messages(TOY, "q")[0]["content"] == system_message(TOY)


def test_instructions_are_v13s_task_definitions() -> None:
    for name in ("jamp", "janli", "jnli", "jsem", "jsick"):
        task = TASKS[name]
        assert task.instruction.startswith("前提と仮説の関係を" + "、".join(task.label_list) + "の中から回答して")
        assert "それ以外には何も含めないことを厳守してください。\n\n制約：\n- " in task.instruction
    assert "名詞で答えてください。 それ以外" in TASKS["jsquad"].instruction  # v1.3's half-width space
    assert TASKS["jemhopqa"].instruction.endswith("'YES'と'NO'で答えてください。")
    assert "コンマ（,）で繋げてください" in TASKS["niilc"].instruction
    assert "選択肢の番号（例：0）" in TASKS["jcommonsenseqa"].instruction
    assert "アルファベット（例：A）" in TASKS["jmmlu"].instruction
    assert "整数値のみを返し" in TASKS["jsts"].instruction and "0.0〜5.0" in TASKS["jsts"].instruction
    lengths = {n: t.output_length for n, t in TASKS.items()}
    assert lengths == {
        **dict.fromkeys(["jamp", "jnli", "jsem", "jsick", "jsts"], 3),
        **{"janli": 7, "jemhopqa": 15, "niilc": 180, "jsquad": 25, "jcommonsenseqa": 1, "jmmlu": 5, "mawps": 10},
    }


# ---------------------------------------------------------------------------------------------------------------
# Normalisation and metrics, on hand-worked examples.


def test_normalize_answer_cuts_at_the_first_blank_line_and_applies_nfkc() -> None:
    assert normalize_answer("ＡＢＣ１２３\n\n理由：…") == "ABC123"  # full-width → half-width, cut at "\n\n"
    assert normalize_answer("ｴﾝﾄﾘｰ") == "エントリー"  # half-width katakana → full-width
    assert normalize_answer("a\nb\n\nc") == "a\nb"  # a single line break is kept
    assert normalize_answer(" entailment") == " entailment"  # no stripping, as in v1.3
    assert sample_score("exact_match", " entailment", "entailment") == 0.0
    assert sample_score("exact_match", "ｅｎｔａｉｌｍｅｎｔ\n\nだから", "entailment") == 1.0


def test_exact_match() -> None:
    assert exact_match("2", "2") == 1.0
    assert exact_match("2", "2.0") == 0.0


def test_lcs_length() -> None:
    assert lcs_length("ABCBDAB", "BDCABA") == 4  # CLRS's example
    assert lcs_length("東京都", "京都府") == 2
    assert lcs_length("", "abc") == lcs_length("abc", "") == 0


def test_char_f1_is_fuzzywuzzys_token_sort_ratio() -> None:
    # "東京都" vs "東京": LCS 2, lengths 3 + 2 → 1 − (5 − 4) / 5 = 0.8
    assert char_f1("東京都", "東京") == 0.8
    # "abcd" vs "abce": LCS 3 → 1 − 2/8 = 0.75
    assert char_f1("abcd", "abce") == 0.75
    # "abcdef" vs "abcxyz": LCS 3 → 1 − 6/12 = 0.5 exactly
    assert char_f1("abcdef", "abcxyz") == 0.5
    assert char_f1("大阪、東京", "東京 大阪") == 1.0  # punctuation → space, tokens sorted
    assert char_f1("ABC", "abc") == 1.0  # lower-cased
    assert char_f1("café", "caf") == 1.0  # U+0080–U+00FF dropped (force_ascii)
    assert char_f1("", "東京") == 0.0
    assert char_f1("。", "、") == 1.0  # both empty after processing: equal
    # a .5 case decided by rapidfuzz's float steps: LCS 1 of 21 + 59 characters = 2.5% → 3 (2 · 1/80 gives 2)
    assert char_f1("x" + "a" * 20, "x" + "b" * 58) == 0.03


def test_char_f1_matches_fuzzywuzzy() -> None:
    import random

    from fuzzywuzzy import fuzz  # a dev dependency, with python-Levenshtein as v1.3 has it

    fixed = [  # width, case, punctuation and order differences, after v1.3's NFKC of both sides
        ("東京都", "東京"),
        ("ＡＢＣ株式会社", "abc株式会社"),
        ("Tokyo, Japan", "japan tokyo"),
        ("「吾輩は猫である」", "吾輩は猫である。"),
        ("夏目 漱石", "夏目漱石"),
        ("1,000円", "1000円"),
        ("ｶﾀｶﾅ", "カタカナ"),
        ("", ""),
        ("", "東京"),
        ("x" + "a" * 20, "x" + "b" * 58),
    ]
    for a, b in fixed:
        a, b = normalize_answer(a), normalize_answer(b)
        assert char_f1(a, b) == fuzz.token_sort_ratio(a, b) / 100, (a, b)
    rng = random.Random(0)
    alphabet = "あいうカキ日本 、。,.!?ABab12é×_ー\u3000"
    for _ in range(3000):
        a = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 10)))
        b = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 10)))
        assert char_f1(a, b) == fuzz.token_sort_ratio(a, b) / 100, (a, b)


def test_parse_float() -> None:
    assert parse_float("約3.5です") == 3.5
    assert parse_float("なし") == -2.0
    assert parse_float("1.2.3") == -2.0


def test_pearson_and_spearman() -> None:
    # golds 1, 2, 3 against 1, 2, 4: cov 3, var 2 and 42/9 → r = 9 / √84
    assert pearson(["1", "2", "4"], ["1.0", "2.0", "3.0"]) == pytest.approx(9 / math.sqrt(84))
    assert pearson(["3", "3", "3"], ["1.0", "2.0", "3.0"]) == 0.0  # undefined → 0, as v1.3
    # an unreadable answer counts as -2.0 ("-" is dropped too): -2, 2, 3 → devs -3, 1, 2 → r = 5 / √28
    assert pearson(["x", "2", "3"], ["1.0", "2.0", "3.0"]) == pytest.approx(5 / math.sqrt(28))
    assert pearson(["-3"], ["1.0"]) == 0.0  # fewer than two samples
    assert pearson(["1", "3"], ["2.0", "5.0"]) == pytest.approx(1.0)  # two samples: a line through both
    assert pearson(["3", "1"], ["2.0", "5.0"]) == pytest.approx(-1.0)
    # r is scale-free: small spreads (a product of variances below 1) give the r of the same data times 1000
    small = pearson(["0", "0.1", "0.3"], ["0", "0.1", "0.2"])
    assert small == pytest.approx(3 / math.sqrt(28 / 3))  # by hand, in tenths: dx = (-1, 0, 1), dy = (-4, -1, 5) / 3
    assert small == pytest.approx(pearson(["0", "100", "300"], ["0", "100", "200"]))
    # ties share their mean rank: preds 1, 1, 2, 3 → ranks 1.5, 1.5, 3, 4 against 1..4 → ρ = 3 / √10
    assert spearman(["1", "1", "2", "3"], ["1.0", "2.0", "3.0", "4.0"]) == pytest.approx(3 / math.sqrt(10))
    assert spearman(["5", "1", "3"], ["1.0", "2.0", "3.0"]) == pytest.approx(-0.5)
    assert _average_ranks(np.array([30.0, 10.0, 20.0, 20.0])).tolist() == [4.0, 1.0, 2.5, 2.5]


def test_sample_score_per_metric() -> None:
    assert sample_score("char_f1", "東京都\n\n補足", "東京") == 0.8
    assert sample_score("pearson", "4", "3.0") == pytest.approx(0.8)  # 1 − |4 − 3| / 5
    assert sample_score("spearman", "３", "3.0") == 1.0  # NFKC first
    assert sample_score("pearson", "なし", "5.0") == 0.0  # −2.0 is 7 away: clipped at 0
    with pytest.raises(ValueError, match="unknown metric"):
        sample_score("bleu", "a", "a")
