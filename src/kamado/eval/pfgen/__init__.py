"""pfgen-bench (Preferred Generation Benchmark, pfnet-research/pfgen-bench, arXiv 2502.09316) in kamado.

Fifty Japanese questions, each asked after 20 question–answer examples (no instruction, so a pre-trained model
can take it: PLaMo-100B's base model was scored on it), answers of about 100 characters sampled in many trials
and scored without a judge, by character n-gram statistics against ~1,000 reference answers per question. Read
in data-flow order:

- `data`: the question files, examples and published results (the full set in ../shared, a 7-question sample
  in `samples/eval/pfgen`).
- `prompt`: upstream's prompts — examples chosen per trial and seed — and sampling settings.
- `run`: answers from a `kamado.eval.generate.Generator`, written as upstream's `trials.jsonl.xz`.
- `ngram`, `keywords`, `score`: fluency, truthfulness, helpfulness and upstream's `result.json`, bit for bit.
- `report`, `stage`, `commands`: tables beside the published scores, the recipe stage, `kamado eval pfgen`
  and `kamado eval pfgen-score`.
"""
