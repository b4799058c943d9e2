"""llm-jp-eval v1.3's Alpaca-style Japanese prompt, as chat messages and as the plain text v1.3 feeds a model.

v1.3 writes one text: a fixed preamble, `### 指示:` with the task's instruction, then for each few-shot example and
finally for the sample an `### 入力:` block followed by `### 応答:` (the example's answer, or nothing: the model
writes it). The chat form keeps every piece and maps each block onto the role that plays it:

    preamble + "### 指示:" block  → the system message
    each "### 入力:" block         → a user message (its content is the input itself)
    each "### 応答:" block         → an assistant message (the answer)

so a model trained on `task_messages` (SFT, DPO) sees v1.3's instruction verbatim, and `render_alpaca` turns the
messages back into v1.3's exact text for a base model that has no chat template: `alpaca_prompt` is
`render_alpaca(task_messages(...))`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from kamado.eval.jaster.base import Sample, Task

PREAMBLE = "以下は、タスクを説明する指示と、文脈のある入力の組み合わせです。要求を適切に満たす応答を書きなさい。"
INSTRUCTION_HEADER = "\n\n### 指示:\n"
INPUT_HEADER = "\n\n### 入力:\n"
RESPONSE_HEADER = "\n\n### 応答:\n"


def system_message(task: Task) -> str:
    return PREAMBLE + INSTRUCTION_HEADER + task.instruction


def task_messages(task: Task, sample_input: str, few_shots: Sequence[Sample] = ()) -> list[dict[str, str]]:
    """[system, (user, assistant) per few-shot example, user]: the prompt for one sample; the answer (the sample's
    output) is the assistant message that follows."""
    messages = [{"role": "system", "content": system_message(task)}]
    for shot in few_shots:
        messages.append({"role": "user", "content": shot.input})
        messages.append({"role": "assistant", "content": shot.output})
    messages.append({"role": "user", "content": sample_input})
    return messages


def render_alpaca(messages: Sequence[Mapping[str, str]]) -> str:
    """v1.3's prompt text from `task_messages`' messages; ends with the open `### 応答:` after a user message."""
    assert messages and messages[0]["role"] == "system", "the first message is the system message"
    text = messages[0]["content"]
    for m in messages[1:]:
        assert m["role"] in ("user", "assistant"), m["role"]
        text += (INPUT_HEADER if m["role"] == "user" else RESPONSE_HEADER) + m["content"]
    if messages[-1]["role"] == "user":
        text += RESPONSE_HEADER
    return text


def alpaca_prompt(task: Task, sample_input: str, few_shots: Sequence[Sample] = ()) -> str:
    """The exact text v1.3 gives a model for `sample_input` after `few_shots`."""
    return render_alpaca(task_messages(task, sample_input, few_shots))
