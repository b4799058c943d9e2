"""`kamado serve` (the OpenAI-compatible server and its web chat page) and `kamado chat` (a terminal chat).

Both load a run folder or one checkpoint folder, put the model behind the continuous-batching engine and talk to
it through the tokenizer's chat template. torch, FastAPI and uvicorn are imported inside the commands, so that
`kamado --help` stays fast. Flags are range-checked before anything heavy is loaded, and `serve` binds its port
before it loads the model: a port that is taken fails in the first second, as one line.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, TextIO

from kamado.config import SAMPLING_RANGES
from kamado.config_checks import AT_LEAST_ONE, Range, check_value
from kamado.errors import ConfigError, KamadoError

if TYPE_CHECKING:
    from kamado.serve.engine import Engine, GenParams
    from kamado.tokenizer import Tokenizer

CHAT_HELP = (
    "/reset clears the conversation · /system TEXT sets the system prompt · /exit leaves\n"
    "Ctrl-C stops a reply · Ctrl-D leaves"
)
MIN_ROOM = 64  # tokens kept free for the reply: older turns are dropped from the prompt before that is lost


# ------------------------------------------------------------------------------------------------------ serve
def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free one), or a ConfigError that says what to do."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"--port {port}: already in use on {host}; choose another (--port 0 = any free)"
            ) from None
        raise ConfigError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e})") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cmd_serve(args: argparse.Namespace, overrides: list[str]) -> None:
    check_value("--port", args.port, Range(0, 65535), integer=True)
    check_value("--max-batch", args.max_batch, AT_LEAST_ONE, integer=True)
    api_key = args.api_key or os.environ.get("KAMADO_API_KEY") or None
    if api_key is not None and not (api_key.isascii() and api_key.isprintable() and " " not in api_key):
        raise ConfigError("--api-key / KAMADO_API_KEY: use printable ASCII without spaces (an HTTP header carries it)")
    sock = bind_socket(args.host, args.port)
    try:
        _serve(args, sock, api_key)
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it shut down for
        print("kamado serve: stopped", file=sys.stderr)
    finally:
        sock.close()


def _serve(args: argparse.Namespace, sock: socket.socket, api_key: str | None) -> None:
    import uvicorn

    from kamado.serve.engine import Engine
    from kamado.serve.load import load_for_serving, serving_dtype
    from kamado.serve.server import create_app

    model, tok, name = load_for_serving(args.checkpoint, args.tokenizer, _device(args.device))
    engine = Engine(model, tok, max_batch=args.max_batch, dtype=serving_dtype(args.dtype, _device(args.device)))
    app = create_app(engine, tok, name, api_key)
    url = url_of(sock)
    print(f"kamado serve: {name} at {url} (chat page at /, OpenAI API at {url}v1); Ctrl-C stops", flush=True)
    if not api_key and sock.getsockname()[0] not in ("127.0.0.1", "::1"):
        print("kamado serve: warning: listening beyond this machine without an API key (--api-key)", file=sys.stderr)
    uvicorn.Server(uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=5)).run(sockets=[sock])


# ------------------------------------------------------------------------------------------------------- chat
def run_chat(
    engine: Engine,
    tok: Tokenizer,
    params: GenParams,
    system: str = "",
    read: Callable[[str], str] = input,
    out: TextIO = sys.stdout,
) -> None:
    """The terminal chat loop on a started engine, until /exit or end of input. Ctrl-C during a reply cancels
    that reply (what came so far stays in the conversation); Ctrl-C at the prompt only reminds how to leave."""
    turns: list[dict[str, str]] = []
    while True:
        try:
            line = read("> ")
        except EOFError:
            out.write("\n")
            return
        except KeyboardInterrupt:
            out.write("\n(Ctrl-D or /exit leaves)\n")
            continue
        text = line.strip()
        if not text:
            continue
        command, _, rest = text.partition(" ")
        if command in ("/exit", "/quit"):
            return
        if command == "/reset":
            turns.clear()
            out.write("(conversation cleared)\n")
        elif command == "/system":
            system = rest.strip()
            out.write(f"(system prompt: {system})\n" if system else "(no system prompt)\n")
        elif command == "/help":
            out.write(CHAT_HELP + "\n")
        elif re.fullmatch(r"/[a-z]+", command):  # a typo'd command is not sent to the model
            out.write(f"(unknown command {command}; {CHAT_HELP})\n")
        else:
            turns.append({"role": "user", "content": line})
            reply = _reply(engine, tok, params, system, turns, out)
            if reply is None:
                turns.pop()
            else:
                turns.append({"role": "assistant", "content": reply})


def _reply(
    engine: Engine, tok: Tokenizer, params: GenParams, system: str, turns: list[dict[str, str]], out: TextIO
) -> str | None:
    """Stream one reply to `out` and return its text; None when the message cannot fit the context."""
    head = [{"role": "system", "content": system}] if system else []
    room = min(MIN_ROOM, engine.max_len // 4)
    ids = tok.encode_chat(head + turns)
    while len(ids) > engine.max_len - room and len(turns) > 2:  # forget the oldest exchange
        del turns[:2]
        ids = tok.encode_chat(head + turns)
        out.write("(the oldest turn was dropped to fit the context)\n")
    if len(ids) >= engine.max_len:
        out.write(f"(that message is {len(ids)} tokens with the system prompt; the context holds {engine.max_len})\n")
        return None
    limit = min(params.max_tokens or engine.max_len, engine.max_len - len(ids))
    seed = None if params.seed is None else params.seed + len(turns) // 2  # a new draw for every turn
    request = engine.submit(ids, replace(params, max_tokens=limit, seed=seed))
    shown = ""
    try:
        for delta in request.stream():
            out.write(delta.text)
            out.flush()
            shown += delta.text
    except KeyboardInterrupt:
        request.cancel()
        request.result(timeout=60)  # the engine frees the slot at its next step
        out.write(" [stopped]\n")
        return shown  # the conversation goes on from what the user saw
    out.write("\n" if request.finish_reason != "length" else " [max tokens]\n")
    return request.text


def cmd_chat(args: argparse.Namespace, overrides: list[str]) -> None:
    ranges = {k: v for k, v in SAMPLING_RANGES.items() if k != "max_new_tokens"}
    for name, allowed in {**ranges, "max_tokens": AT_LEAST_ONE}.items():
        check_value(f"--{name.replace('_', '-')}", getattr(args, name), allowed)

    from kamado.serve.engine import Engine, GenParams
    from kamado.serve.load import load_for_serving, serving_dtype

    # Ctrl-C stops a reply even when the chat was started from a background job, which inherits SIGINT ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)
    model, tok, name = load_for_serving(args.checkpoint, args.tokenizer, _device(args.device))
    try:
        stops: tuple[int, ...] = (tok.token_id("<|im_end|>"),)
    except KamadoError:
        stops = ()
    params = GenParams(args.max_tokens, args.temperature, args.top_k, args.top_p, args.seed, (), stops)
    engine = Engine(model, tok, max_batch=1, dtype=serving_dtype(args.dtype, _device(args.device))).start()
    if sys.stdin.isatty():
        import readline  # noqa: F401  (line editing and history for input())
    print(f"kamado chat · {name} · context {engine.max_len} tokens\n{CHAT_HELP}", flush=True)
    try:
        run_chat(engine, tok, params, args.system)
    finally:
        engine.stop()


# ---------------------------------------------------------------------------------------------------- parsers
def add_serving_parsers(sub: argparse._SubParsersAction) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    s = sub.add_parser(
        "serve",
        help="OpenAI-compatible HTTP server with a web chat page",
        description="Serve a trained model: POST /v1/chat/completions and /v1/completions (OpenAI's API, streaming "
        "too), GET /v1/models, GET /health, and a chat page at /.\n\n"
        "  kamado serve runs/tiny                       # http://127.0.0.1:8000/\n"
        "  kamado serve runs/tiny --host 0.0.0.0 --api-key SECRET",
        formatter_class=fmt,
    )
    s.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT", help="run folder or checkpoint folder (step_XXXXXXXX)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    s.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000; 0 = any free port)")
    s.add_argument("--api-key", help="require `Authorization: Bearer KEY` on /v1 (default: $KAMADO_API_KEY, else open)")
    s.add_argument("--max-batch", type=int, default=8, help="requests decoded together (default: 8)")
    _common(s)
    s.set_defaults(fn=cmd_serve)

    c = sub.add_parser(
        "chat",
        help="chat with a trained model in the terminal",
        description="A terminal chat with streaming output and the conversation kept between turns.\n\n" + CHAT_HELP,
        formatter_class=fmt,
    )
    c.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT", help="run folder or checkpoint folder (step_XXXXXXXX)")
    c.add_argument("--system", default="", help="system prompt (change it in the chat with /system TEXT)")
    c.add_argument("--temperature", type=float, default=0.7, help="0 = greedy (default: 0.7)")
    c.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling (default: 0.95)")
    c.add_argument("--top-k", type=int, default=0, help="0 = off (default)")
    c.add_argument("--max-tokens", type=int, default=512, help="longest reply in tokens (default: 512)")
    c.add_argument("--seed", type=int, help="seed for reproducible replies")
    _common(c)
    c.set_defaults(fn=cmd_chat)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokenizer", help="tokenizer folder (default: <run folder>/tokenizer)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: cuda when available")
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16"],
        help="weights and KV cache while serving (default: bfloat16 where the CPU/GPU runs it fast, else float32)",
    )
