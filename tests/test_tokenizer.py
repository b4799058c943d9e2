"""Tokenizer: exact round trips on any string, digits, special tokens, AutoTokenizer parity, errors."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from kamado.config import TokenizerConfig
from kamado.data.jsonl import iter_jsonl_texts
from kamado.errors import ConfigError, DataError
from kamado.tokenizer.tokenizer import Tokenizer
from kamado.tokenizer.train import SPECIAL_TOKENS, train_tokenizer

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
TRAIN_FILES = [SAMPLES / "ja_aozora.jsonl.gz", SAMPLES / "en_web.jsonl.gz"]
VOCAB = 2000

ODD_TEXTS = [
    "吾輩は猫である。名前はまだ無い。",
    "The quick brown fox jumps over the lazy dog.  Twice!\n\n\tIndented.",
    "𠮷野家の𩸽、👨‍👩‍👧‍👦🇯🇵 emoji and ZWJ",
    "e\u0301 か\u3099 combining marks; ｶﾀｶﾅ half-width; ＡＢＣ１２３ full-width",
    "\x00\x01\x07\x1b[0m\x7f\x85 control chars",
    "\ufeffBOM \u200b zero width \u2028 line sep \r\n CRLF",
    "mixed: 東京は2024年3月に12.5°Cでした。C++ & <html> \\ 'quotes' «»",
    "<|endoftext|> <|im_start|>user written literally<|im_end|>",
    "",
    " ",
    "\U0010fffd\U000e0001 private use and tags",
]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tok")
    return train_tokenizer(iter_jsonl_texts(TRAIN_FILES), out, TokenizerConfig(vocab_size=VOCAB))


@pytest.fixture(scope="module")
def tok(tok_dir: Path) -> Tokenizer:
    return Tokenizer.load(tok_dir)


def test_saved_folder(tok_dir: Path, tok: Tokenizer) -> None:
    assert (tok_dir / "tokenizer.json").is_file()
    cfg = json.loads((tok_dir / "tokenizer_config.json").read_text())
    assert cfg["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert tok.vocab_size == VOCAB
    assert Tokenizer.load(tok_dir / "tokenizer.json").encode("猫") == tok.encode("猫")


@pytest.mark.parametrize("text", ODD_TEXTS)
def test_round_trip_exact(tok: Tokenizer, text: str) -> None:
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


def test_every_code_point_round_trips(tok: Tokenizer) -> None:
    """Byte-level: no character, however rare, falls outside the vocabulary."""
    chars = [chr(c) for c in range(0, 0x110000, 97) if not 0xD800 <= c < 0xE000]
    text = "".join(chars)
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert max(ids) < tok.vocab_size
    assert tok.encode_batch(chars[:500]) == [tok.encode(c) for c in chars[:500]]


def test_learned_merges_beyond_bytes(tok: Tokenizer) -> None:
    assert len(tok.encode("吾輩は猫である")) < len("吾輩は猫である".encode())


def test_digits_one_per_token(tok: Tokenizer) -> None:
    assert [tok.decode([i]) for i in tok.encode("0123456789")] == list("0123456789")
    for text in ["東京は2024年3月", "Call 555-0199 now", "x=31415926535"]:
        pieces = [tok.decode([i]) for i in tok.encode(text)]  # a lone piece of a kanji decodes to U+FFFD
        digit_pieces = [p for p in pieces if any(c.isdigit() for c in p)]
        assert digit_pieces and all(len(p) == 1 for p in digit_pieces), pieces


def test_special_tokens(tok: Tokenizer) -> None:
    ids = [tok.token_id(s) for s in SPECIAL_TOKENS]
    assert ids == list(range(len(SPECIAL_TOKENS)))
    assert (tok.eos_id, tok.pad_id) == (tok.token_id("<|endoftext|>"), tok.token_id("<|pad|>"))
    for s, i in zip(SPECIAL_TOKENS, ids, strict=True):
        assert tok.encode(s, allow_special=True) == [i]
        assert tok.decode([i]) == s
        assert i not in tok.encode(s)  # ordinary text: the literal string is spelled out, not the id
    with pytest.raises(DataError):
        tok.token_id("<|no_such_token|>")


def test_ordinary_text_never_yields_special_ids(tok: Tokenizer) -> None:
    texts = [
        *iter_jsonl_texts([SAMPLES / "ja_heldout.jsonl.gz", SAMPLES / "en_heldout.jsonl.gz"]),
        *ODD_TEXTS,
    ]
    specials = set(range(len(SPECIAL_TOKENS)))
    for ids in tok.encode_batch(texts):
        assert not specials & set(ids)


def test_autotokenizer_parity_and_chat_template(tok_dir: Path, tok: Tokenizer) -> None:
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(tok_dir))
    assert (hf.eos_token_id, hf.pad_token_id) == (tok.eos_id, tok.pad_id)
    for text in ODD_TEXTS[:7]:
        ids = hf(text, add_special_tokens=False)["input_ids"]
        assert ids == tok.encode(text)
        assert hf.decode(ids) == text
    msgs = [{"role": "system", "content": "丁寧に"}, {"role": "user", "content": "猫の名前は?"}]
    rendered = hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert rendered == (
        "<|im_start|><|system|>\n丁寧に<|im_end|>\n<|im_start|><|user|>\n猫の名前は?<|im_end|>\n"
        "<|im_start|><|assistant|>\n"
    )
    ids = hf(rendered, add_special_tokens=False)["input_ids"]
    assert ids == tok.encode(rendered, allow_special=True)
    assert ids[:2] == [tok.token_id("<|im_start|>"), tok.token_id("<|system|>")]
    assert ids.count(tok.token_id("<|im_end|>")) == 2


def test_compresses_heldout_japanese(tok: Tokenizer) -> None:
    """Raw UTF-8 bytes give 1/3 char per token for kana/kanji; learned merges must beat 1 char per token."""
    ja = list(iter_jsonl_texts([SAMPLES / "ja_heldout.jsonl.gz"]))
    en = list(iter_jsonl_texts([SAMPLES / "en_heldout.jsonl.gz"]))
    assert tok.chars_per_token(ja) > 1.1
    assert tok.chars_per_token(en) > 1.6


def test_max_train_chars_caps_the_corpus(tmp_path: Path) -> None:
    cfg = TokenizerConfig(vocab_size=300, max_train_chars=3000)
    fed: list[int] = []

    def texts():  # type: ignore[no-untyped-def]
        for t in iter_jsonl_texts(TRAIN_FILES):
            fed.append(len(t))
            yield t

    tok = Tokenizer.load(train_tokenizer(texts(), tmp_path, cfg))
    assert len(fed) <= 3  # stopped reading once the cap was reached (docs are >= 1000 chars)
    assert tok.decode(tok.encode("猫")) == "猫"


# ------------------------------------------------------------------------------------------------------------
# Errors a user can cause.


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.jsonl"):
        list(iter_jsonl_texts([tmp_path / "nope.jsonl"]))
    with pytest.raises(DataError, match=r"tokenizer\.json"):
        Tokenizer.load(tmp_path)


def test_empty_corpus(tmp_path: Path) -> None:
    empty = _write(tmp_path / "empty.jsonl", ['{"text": ""}', ""])
    with pytest.raises(DataError, match="empty"):
        list(iter_jsonl_texts([empty]))
    with pytest.raises(DataError, match="empty"):
        train_tokenizer(iter_jsonl_texts([empty]), tmp_path / "out", TokenizerConfig(vocab_size=300))
    with pytest.raises(DataError, match="empty"):
        train_tokenizer([], tmp_path / "out", TokenizerConfig(vocab_size=300))
    with pytest.raises(DataError):
        list(iter_jsonl_texts([]))


def test_bad_lines_name_file_and_line(tmp_path: Path) -> None:
    bad = _write(tmp_path / "bad.jsonl", ['{"text": "ok"}', '{"text": "cut'])
    with pytest.raises(DataError, match=r"bad\.jsonl:2: invalid JSON"):
        list(iter_jsonl_texts([bad]))
    no_text = _write(tmp_path / "no_text.jsonl", ['{"body": "x"}'])
    with pytest.raises(DataError, match=r"no_text\.jsonl:1"):
        list(iter_jsonl_texts([no_text]))
    not_gz = tmp_path / "fake.jsonl.gz"
    not_gz.write_bytes(b"not gzip")
    with pytest.raises(DataError, match=r"fake\.jsonl\.gz"):
        list(iter_jsonl_texts([not_gz]))
    # A bad file met during training still surfaces as a DataError, not a Rust-side exception.
    with pytest.raises(DataError, match=r"bad\.jsonl:2"):
        train_tokenizer(iter_jsonl_texts([bad]), tmp_path / "out", TokenizerConfig(vocab_size=300))


def test_reads_gzip(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write('{"text": "一"}\n{"text": "二", "source": "s"}\n')
    assert list(iter_jsonl_texts([path])) == ["一", "二"]


def test_zst_without_zstandard_is_a_clear_error(tmp_path: Path) -> None:
    try:
        import zstandard  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("zstandard is installed")
    path = tmp_path / "x.jsonl.zst"
    path.write_bytes(b"\x28\xb5\x2f\xfd")
    with pytest.raises(DataError, match=r"x\.jsonl\.zst.*zstandard"):
        list(iter_jsonl_texts([path]))


def test_vocab_too_small_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="vocab_size"):
        train_tokenizer(["abc"], tmp_path, TokenizerConfig(vocab_size=100))


@pytest.mark.parametrize("answer", ["n", "im", "user", "assistant", "<|im_end|>"])
def test_a_short_answer_is_not_found_inside_the_markup(tok: Tokenizer, answer: str) -> None:
    """Found by the DPO-mix experiment: the answer "n" was looked up in the rendered text and found in the markup's
    "<|im_end|>", which then got encoded as plain text. The markup must stay special tokens and the answer text."""
    messages = [{"role": "user", "content": "質問"}, {"role": "assistant", "content": answer}]
    ids = tok.encode_chat(messages, add_generation_prompt=False)
    assert tok.decode(ids) == tok.render_chat(messages, add_generation_prompt=False)
    end = tok.token_id("<|im_end|>")
    assert ids.count(end) == 2  # both turns closed by the special token, not by bytes that spell it
    last = len(ids) - 1 - ids[::-1].index(end)
    plain = tok.encode(answer)  # the answer as text, right before the closing special token
    assert ids[last - len(plain) : last] == plain
