"""SFT: assistant-only targets token by token, packing isolation, bad conversations counted, exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kamado.errors import DataError
from kamado.model.loss import IGNORE_INDEX
from kamado.posttrain.sft import PackedConversations, encode_conversation, read_conversations

from .conftest import small_model

CONV = [
    {"role": "system", "content": "短く答える。"},
    {"role": "user", "content": "猫は何と鳴く？"},
    {"role": "assistant", "content": "にゃあ。"},
    {"role": "user", "content": "犬は？"},
    {"role": "assistant", "content": "わん。"},
]


def test_only_the_assistant_turns_and_their_end_token_are_trained(tok):
    enc = encode_conversation(tok, CONV)
    assert enc.ids == tok.encode_chat(CONV, add_generation_prompt=False)
    trained = tok.decode([i for i, ok in zip(enc.ids, enc.trained, strict=True) if ok])
    assert trained == "にゃあ。<|im_end|>わん。<|im_end|>"
    # written out by hand: the trained spans are exactly the answers' own tokens and one end-of-turn each
    end = tok.token_id("<|im_end|>")
    spans, cur = [], []
    for i, ok in zip(enc.ids, enc.trained, strict=True):
        if ok:
            cur.append(i)
        elif cur:
            spans.append(cur)
            cur = []
    assert spans == [[*tok.encode("にゃあ。"), end], [*tok.encode("わん。"), end]]
    # the user's and system's text, the role markup and the newline after <|im_end|> are never trained
    assert not enc.trained[-1] and tok.decode(enc.ids[-1:]) == "\n"


def _write(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def test_bad_conversations_are_counted_and_skipped(tok, tmp_path):
    good = {"messages": CONV}
    bad = [
        {"messages": [{"role": "user", "content": "こんにちは"}]},  # no assistant turn
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "  "}]},  # empty answer
        {"messages": [{"role": "robot", "content": "a"}, {"role": "assistant", "content": "b"}]},  # unknown role
        {"messages": [{"role": "user", "content": "a" * 400}, {"role": "assistant", "content": "b"}]},  # too long
        {"text": "no messages"},
        {"messages": [{"role": "user"}, {"role": "assistant", "content": "b"}]},
    ]
    convs, skipped = read_conversations([_write(tmp_path / "d.jsonl", [good, *bad, good])], tok, 64)
    assert len(convs) == 2
    assert skipped == {
        "no assistant turn": 1,
        "empty assistant turn": 1,
        "unknown role": 1,
        "longer than the context (dropped)": 1,
        "no messages list": 1,
        "malformed message": 1,
    }
    with pytest.raises(DataError, match=r"no usable conversation in \S+e\.jsonl, \S+f\.jsonl \(skipped"):
        read_conversations([_write(tmp_path / "e.jsonl", bad), _write(tmp_path / "f.jsonl", bad)], tok, 64)


def test_truncation_keeps_the_context_and_drops_what_has_nothing_trained(tok, tmp_path):
    long_answer = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "猫" * 300}]}
    long_prompt = {"messages": [{"role": "user", "content": "a" * 300}, {"role": "assistant", "content": "b"}]}
    rows = [long_prompt, long_answer, long_prompt, long_answer]
    convs, skipped = read_conversations([_write(tmp_path / "t.jsonl", rows)], tok, 32, overlong="truncate")
    assert [len(c.ids) for c in convs] == [33, 33] and all(len(c.trained) == 33 for c in convs)
    assert all(any(c.trained) for c in convs)  # the answers that were cut, not the prompts left without one
    assert skipped == {
        "longer than the context (truncated, kept)": 2,
        "longer than the context (nothing trained left after truncation)": 2,
    }


def _convs(tok, n: int):
    convs = []
    for i in range(n):
        msgs = [
            {"role": "user", "content": f"{i}たす{i}は？"},
            {"role": "assistant", "content": f"{2 * i}です。" * (1 + i % 3)},
        ]
        convs.append(encode_conversation(tok, msgs))
    return convs


def test_a_packed_batch_gives_each_conversation_the_loss_it_has_alone(tok):
    convs = _convs(tok, 7)
    loader = PackedConversations(convs, seq_len=64, batch_size=2, seed=3)
    x, y, seg = loader.next_batch()
    assert (seg[:, 0] == 0).all() and (seg.max(1).values >= 1).all()  # several conversations in each row
    model = small_model(tok.vocab_size).eval()
    with torch.no_grad():
        logits = model(x, segments=seg)
        for b in range(2):
            for s in seg[b].unique().tolist():
                if s < 0:
                    assert (y[b][seg[b] == s] == IGNORE_INDEX).all()  # padding is never scored
                    continue
                where = (seg[b] == s).nonzero()[:, 0]
                ids = [*x[b, where].tolist(), 0]
                alone = next(c for c in convs if c.ids[:-1] == ids[:-1])  # which conversation this segment is
                want = torch.tensor(
                    [t if ok else IGNORE_INDEX for t, ok in zip(alone.ids[1:], alone.trained[1:], strict=True)]
                )
                assert torch.equal(y[b, where], want)
                solo = model(torch.tensor([alone.ids[:-1]]))[0]
                torch.testing.assert_close(logits[b, where], solo, atol=1e-5, rtol=1e-5)


def test_every_conversation_once_per_epoch_and_a_new_order_the_next(tok):
    convs = _convs(tok, 9)
    loader = PackedConversations(convs, seq_len=40, batch_size=1, seed=0)
    rows = loader.rows_per_epoch()

    def epoch_contents():
        seen = []
        for _ in range(rows):
            x, _, seg = loader.next_batch()
            for s in seg[0].unique().tolist():
                if s >= 0:
                    seen.append(tuple(x[0, seg[0] == s].tolist()))
        return seen

    first, second = epoch_contents(), epoch_contents()
    assert sorted(first) == sorted(tuple(c.ids[:-1]) for c in convs)
    assert sorted(second) == sorted(first) and second != first and loader.epoch == 1


def test_loader_resumes_exactly_and_refuses_changed_data(tok):
    convs = _convs(tok, 9)
    a = PackedConversations(convs, seq_len=40, batch_size=2, seed=5)
    for _ in range(4):
        a.next_batch()
    state = json.loads(json.dumps(a.state_dict()))
    b = PackedConversations(convs, seq_len=40, batch_size=2, seed=5)
    b.load_state_dict(state)
    for _ in range(5):
        assert all(torch.equal(p, q) for p, q in zip(a.next_batch(), b.next_batch(), strict=True))
    with pytest.raises(
        DataError, match=r"SFT data changed since the checkpoint \(9 conversations, seed 5; now 8, seed 5\)"
    ):
        PackedConversations(convs[:-1], seq_len=40, batch_size=2, seed=5).load_state_dict(state)
    with pytest.raises(DataError, match=r"\(9 conversations, seed 5; now 9, seed 6\)"):
        PackedConversations(convs, seq_len=40, batch_size=2, seed=6).load_state_dict(state)


def test_the_trainer_scores_a_packed_batch_as_its_conversations_alone(tok, tmp_path):
    """The trainer hands the segments to the model: its loss on a packed batch is the token-weighted loss of the
    conversations each run on its own."""
    from kamado.config import RunConfig
    from kamado.train.trainer import Trainer

    convs = _convs(tok, 6)
    loader = PackedConversations(convs, seq_len=64, batch_size=2, seed=1)
    model = small_model(tok.vocab_size)
    cfg = RunConfig(out_dir=str(tmp_path / "sft"))
    cfg.model, cfg.train.dtype, cfg.train.z_loss = model.cfg, "fp32", 0.0
    trainer = Trainer(cfg, model, loader, cfg.out_dir)
    x, y, seg = loader.next_batch()
    with torch.no_grad():
        _, got = trainer.objective((x, y, seg))
        total, count = 0.0, 0
        for b in range(2):
            for s in seg[b].unique().tolist():
                if s >= 0:
                    where = seg[b] == s
                    ys = y[b][where][None]
                    n = int((ys != IGNORE_INDEX).sum())
                    total += float(model(x[b][where][None], ys).ce) * n
                    count += n
    assert got["ce"] == pytest.approx(total / count, rel=1e-5)


def test_the_context_rule_is_exact_at_its_boundary_and_counts_every_skip(tok, tmp_path):
    conv = {"messages": [{"role": "user", "content": "猫は？"}, {"role": "assistant", "content": "にゃあ。"}]}
    n = len(encode_conversation(tok, conv["messages"]).ids)  # n tokens give n - 1 (input, target) positions
    path = _write(tmp_path / "b.jsonl", [conv, conv, {"messages": []}, {"messages": []}])
    kept, skipped = read_conversations([path], tok, seq_len=n - 1)
    assert len(kept) == 2 and skipped == {"no messages list": 2}
    rows = [conv, conv, conv, {}]
    msg = r"\(skipped: \{'longer than the context \(dropped\)': 3, 'no messages list': 1\}\)"
    with pytest.raises(DataError, match=msg):  # one token more than the context: every copy dropped, each counted
        read_conversations([_write(tmp_path / "c.jsonl", rows)], tok, seq_len=n - 2)


def test_rows_are_filled_to_exactly_seq_len(tok):
    a, b = _convs(tok, 2)
    both = len(a.ids) - 1 + len(b.ids) - 1
    assert PackedConversations([a, b], seq_len=both, batch_size=1, seed=0).rows_per_epoch() == 1
    assert PackedConversations([a, b], seq_len=both - 1, batch_size=1, seed=0).rows_per_epoch() == 2
    _, _, seg = PackedConversations([a, b], seq_len=both, batch_size=1, seed=0).next_batch()
    assert (seg >= 0).all() and sorted(seg[0].unique().tolist()) == [0, 1]  # no padding left
    n = len(a.ids) - 1  # every later row is filled the same way as the first
    assert PackedConversations([a] * 6, seq_len=2 * n, batch_size=1, seed=0).rows_per_epoch() == 3
    x, y, seg = PackedConversations([a] * 6, seq_len=3 * n, batch_size=2, seed=0).next_batch()  # 3 to a row
    assert x[0].tolist() == a.ids[:-1] * 3 and y[0].tolist() == a.targets().tolist() * 3
    assert seg[1].tolist() == [0] * n + [1] * n + [2] * n


def _with_template(tok, template: str):
    import copy

    other = copy.copy(tok)
    other.chat_template = template
    return other


def test_a_template_that_does_not_extend_its_beginning_is_refused(tok):
    counted = "{{ messages | length }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    with pytest.raises(DataError, match=r"^the chat template does not render a conversation as an extension of its"):
        encode_conversation(_with_template(tok, counted), CONV)


def test_a_template_without_an_end_token_trains_the_whole_turn(tok):
    plain = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    plain += "{% if add_generation_prompt %}assistant: {% endif %}"
    t = _with_template(tok, plain)
    enc = encode_conversation(t, CONV[1:3])
    prompt = t.encode_chat(CONV[1:2], add_generation_prompt=True)
    assert enc.trained == [False] * len(prompt) + [True] * (len(enc.ids) - len(prompt))


def test_messages_after_the_last_assistant_turn_are_left_out(tok):
    msgs = [*CONV[1:3], {"role": "user", "content": "それで？"}]
    assert encode_conversation(tok, msgs).ids == tok.encode_chat(msgs[:2], add_generation_prompt=False)
