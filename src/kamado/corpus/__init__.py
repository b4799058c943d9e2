"""Common Crawl WARC → Japanese Markdown documents, as datatrove pipeline steps.

```
.warc(.gz) ─► warc.iter_records ─► reader.WarcPageReader ─► langid.KanaPrefilter ─► extract.MarkdownExtractor
              (framing, skips      (HTTP, charset →        (cheap: kana share of     (trafilatura in a sandbox
               counted)             decoded page)           the raw page)             with a per-page timeout)
                                                                          ─► langid.JapaneseLanguageFilter
```

then `quality_filter.JapaneseQualityFilter` (Swallow / Gopher / HojiChar-style rules; thresholds in `quality`),
exact + MinHash dedup on datatrove's sharded stages (`dedup`, `minhash`), and `reshard` into uniform shards with a
manifest; `pipeline.run_corpus` (the `kamado corpus run` command) chains them, configured by `config.CorpusConfig`
(TOML presets in `recipes/corpus/`), and `report` writes the funnel, drop reasons, languages and speed.
"""
