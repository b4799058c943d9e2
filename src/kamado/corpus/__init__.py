"""Common Crawl WARC → Japanese Markdown documents, as datatrove pipeline steps.

```
.warc(.gz) ─► warc.iter_records ─► reader.WarcPageReader ─► langid.KanaPrefilter ─► extract.MarkdownExtractor
              (framing, skips      (HTTP, charset →        (cheap: kana share of     (trafilatura in a sandbox
               counted)             decoded page)           the raw page)             with a per-page timeout)
                                                                          ─► langid.JapaneseLanguageFilter
```

Later stages (quality filters, MinHash dedup, resharding, `kamado corpus`, Ray) build on these steps.
"""
