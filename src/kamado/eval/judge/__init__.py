"""The judge benchmarks: Japanese MT-Bench, MT-Bench, Rakuda and ELYZA-tasks-100, graded by an LLM judge.

The flow follows FastChat's llm_judge (lm-sys/FastChat; Stability-AI/FastChat jp-stable for the Japanese MT-Bench),
yuzu-ai/japanese-llm-ranking for Rakuda and Northern-System-Service/gpt4-autoeval for ELYZA-tasks-100, and writes
their file formats, so our files and theirs can be read by either side:

    benchmarks.py   the four benchmarks: questions, reference answers, judge prompts (data files, never our prose)
    answers.py      the model's answers (two turns for the MT-Benches) -> FastChat `model_answer` JSONL, resumable
    verdicts.py     reading a judge's reply: "[[N]]", Rakuda's last digit, ELYZA's JSON grade (pure functions)
    cache.py        judge replies on disk, keyed by (question, answer, judge, prompt): a rerun never pays twice
    calls.py        sending judge requests through an OpenAI-compatible endpoint, through the cache
    single.py       single-answer grading (MT-Benches, both turns; ELYZA 1-5 with its per-task aspects)
    pairwise.py     Rakuda: the answer against reference models' answers, both orders -> battles
    bradley_terry.py  Rakuda's ratings: Bradley-Terry with the judge's position bias, bootstrap intervals
    report.py       per-benchmark means per turn / category, unparseable and error counts; Rakuda ratings
    scores.py       `kamado eval judge-scores`: FastChat show_result.py's numbers for any judgment file
    run.py          one benchmark end to end: answers -> judgments -> report
    commands.py     `kamado eval judge` and `kamado eval judge-scores`

A judgment whose reply holds no rating is kept with score -1 and counted; a judge call that failed is kept with
score -1, judgment "$ERROR$" (FastChat's marker) and counted separately; neither is averaged in as a zero.
"""
