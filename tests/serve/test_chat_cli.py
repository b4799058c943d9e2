"""`kamado chat`: the loop with scripted input (replies equal the engine's greedy answers for the conversation so
far; /system, /reset, a Ctrl-C during a reply), then the real command in a subprocess fed through stdin, with a real
SIGINT at the prompt and during a reply."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from kamado.serve.commands import run_chat
from kamado.serve.engine import Engine, GenParams, Request
from kamado.serve.load import load_for_serving


@pytest.fixture(scope="module")
def chat(served_run):
    model, tok, _ = load_for_serving(served_run)
    engine = Engine(model, tok, max_batch=1).start()
    stops = (tok.token_id("<|im_end|>"),)
    ref = Engine(load_for_serving(served_run)[0], tok, max_batch=1)

    def greedy(messages, n=12):
        return ref.generate([tok.encode_chat(messages)], GenParams(n, 0.0, stop_token_ids=stops))[0].text

    yield engine, tok, GenParams(12, 0.0, stop_token_ids=stops), greedy
    engine.stop()


def scripted(lines):
    """A `read` that answers prompts from `lines` and then raises EOFError (Ctrl-D); it records what it read."""
    it, used = iter(lines), []

    def read(prompt: str) -> str:
        assert prompt == "> "
        try:
            line = next(it)
        except StopIteration:
            raise EOFError from None
        if isinstance(line, BaseException):
            raise line
        used.append(line)
        return line

    return read, used


def test_replies_are_the_greedy_answers_to_the_conversation_so_far(chat):
    engine, tok, params, greedy = chat
    sys_msg = {"role": "system", "content": "丁寧に答えて"}
    u1, u2 = {"role": "user", "content": "こんにちは"}, {"role": "user", "content": "元気ですか"}
    a1 = greedy([sys_msg, u1])
    a2 = greedy([sys_msg, u1, {"role": "assistant", "content": a1}, u2])
    a3 = greedy([sys_msg, u2])  # after /reset: the system prompt stays, the turns are gone
    a4 = greedy([u2, {"role": "assistant", "content": a3}, u2])  # "/system" alone: no system prompt, same turns
    read, used = scripted(
        ["/system 丁寧に答えて", "こんにちは", "", "元気ですか", "/reset", "元気ですか", "/system", "元気ですか",
         "/frobnicate", "/exit", "never read"]
    )  # fmt: skip
    out = io.StringIO()
    run_chat(engine, tok, params, read=read, out=out)
    assert len({a1, a2, a3, a4}) == 4  # the four conversations really differ
    assert out.getvalue() == (
        "(system prompt: 丁寧に答えて)\n"
        f"{a1} [max tokens]\n{a2} [max tokens]\n(conversation cleared)\n{a3} [max tokens]\n(no system prompt)\n"
        f"{a4} [max tokens]\n(unknown command /frobnicate; /reset clears the conversation · /system TEXT sets the "
        "system prompt · /exit leaves\nCtrl-C stops a reply · Ctrl-D leaves)\n"
    )
    assert used[-1] == "/exit" and not any(engine.slots)


def test_end_of_input_leaves_and_ctrl_c_at_the_prompt_does_not(chat):
    engine, tok, params, greedy = chat
    read, used = scripted([KeyboardInterrupt(), "猫"])
    out = io.StringIO()
    run_chat(engine, tok, params, system="短く", read=read, out=out)
    want = greedy([{"role": "system", "content": "短く"}, {"role": "user", "content": "猫"}])
    assert out.getvalue() == f"\n(Ctrl-D or /exit leaves)\n{want} [max tokens]\n\n" and used == ["猫"]


class InterruptedOutput(io.StringIO):
    """Terminal output where the user presses Ctrl-C while the `at`-th piece of a reply is being printed."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.writes, self.at = 0, at

    def write(self, s: str) -> int:
        self.writes += 1
        if self.writes == self.at:
            raise KeyboardInterrupt
        return super().write(s)


def test_ctrl_c_during_a_reply_cancels_it_and_the_chat_goes_on_from_what_was_shown(served_run):
    model, tok, _ = load_for_serving(served_run)
    model.layers[0].register_forward_pre_hook(lambda *_: time.sleep(0.02))  # a 100-token reply takes 2 s
    engine = Engine(model, tok, max_batch=1).start()
    seen: list[Request] = []
    submit = engine.submit

    def recorded(*args: Any, **kwargs: Any) -> Request:
        seen.append(submit(*args, **kwargs))
        return seen[-1]

    engine.submit = recorded  # type: ignore[method-assign]
    try:
        stops = (tok.token_id("<|im_end|>"),)
        read, _ = scripted(["長い話をして", "続けて"])
        out = InterruptedOutput(at=4)
        run_chat(engine, tok, GenParams(100, 0.0, stop_token_ids=stops), read=read, out=out)
        first, second = seen
        assert first.finish_reason == "cancelled" and len(first.token_ids) < 100
        shown = out.getvalue().split(" [stopped]\n")[0]
        assert shown and first.text.startswith(shown)
        history = [{"role": "user", "content": "長い話をして"}, {"role": "assistant", "content": shown}]
        assert second.prompt_ids == tok.encode_chat([*history, {"role": "user", "content": "続けて"}])
        assert second.finish_reason is not None and not any(engine.slots)
    finally:
        engine.stop()


def test_old_turns_are_dropped_when_the_conversation_outgrows_the_context(chat):
    engine, tok, params, _ = chat
    long = "吾輩は猫である。名前はまだ無い。" * 6
    read, _ = scripted([long, long, long, "猫" * 2000])
    out = io.StringIO()
    run_chat(engine, tok, params, read=read, out=out)
    text = out.getvalue()
    assert "(the oldest turn was dropped to fit the context)" in text
    assert "the context holds 256)" in text  # the message alone does not fit: said, not sent
    assert not any(engine.slots)


# ------------------------------------------------------------------------------------------- the real command
CHAT_MAIN = """
import argparse, sys, time
import kamado.serve.load as load
from kamado.serve.commands import add_serving_parsers
real = load.load_for_serving
def slow(*a, **k):  # 50 ms a token, so that a reply is still running when SIGINT comes
    model, tok, name = real(*a, **k)
    model.layers[0].register_forward_pre_hook(lambda *_: time.sleep(0.05))
    return model, tok, name
load.load_for_serving = slow
p = argparse.ArgumentParser(prog="kamado")
add_serving_parsers(p.add_subparsers())
args = p.parse_args(sys.argv[1:])
args.fn(args, [])
"""


class Terminal:
    """A subprocess's stdout read in a thread, so the test can wait for a piece of text."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc, self.text, self.lock = proc, "", threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        while chunk := os.read(self.proc.stdout.fileno(), 4096):
            with self.lock:
                self.text += chunk.decode("utf-8", errors="replace")

    def wait_for(self, piece: str, after: int = 0, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while (at := self.text.find(piece, after)) < 0:
            assert time.monotonic() < deadline and self.proc.poll() is None, f"no {piece!r} in {self.text!r}"
            time.sleep(0.01)
        return at + len(piece)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((line + "\n").encode())
        self.proc.stdin.flush()


def test_kamado_chat_through_stdin_with_sigint_at_the_prompt_and_during_a_reply(served_run, chat):
    _, _, _, greedy = chat
    cmd = [sys.executable, "-c", CHAT_MAIN, "chat", str(served_run), "--temperature", "0", "--max-tokens", "12"]
    cmd += ["--dtype", "float32"]  # the reference answers are float32 greedy
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    term = Terminal(proc)
    try:
        at = term.wait_for("kamado chat · tiny-chat · context 256 tokens\n")
        term.send("/system 丁寧に答えて")
        at = term.wait_for("(system prompt: 丁寧に答えて)\n", at)
        term.send("こんにちは")
        want = greedy([{"role": "system", "content": "丁寧に答えて"}, {"role": "user", "content": "こんにちは"}])
        at = term.wait_for(f"> {want} [max tokens]\n", at)
        term.wait_for("> ", at)
        proc.send_signal(signal.SIGINT)  # at the prompt: a reminder, not an exit
        at = term.wait_for("(Ctrl-D or /exit leaves)\n", at)
        term.send("/reset")
        at = term.wait_for("(conversation cleared)\n", at)
        term.send("/system")
        at = term.wait_for("(no system prompt)\n", at)
        term.send("もっと長く話して")
        at = term.wait_for("> ", at)
        while len(term.text) == at:  # the reply has begun (12 tokens, 50 ms each)
            time.sleep(0.005)
        proc.send_signal(signal.SIGINT)
        at = term.wait_for(" [stopped]\n", at)
        term.send("/exit")
        assert proc.wait(timeout=30) == 0, proc.stderr.read()  # type: ignore[union-attr]
    finally:
        proc.kill()
        proc.wait()
