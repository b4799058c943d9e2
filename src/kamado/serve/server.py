"""`kamado serve`: an OpenAI-compatible HTTP server (FastAPI) in front of the continuous-batching engine.

Routes: `POST /v1/chat/completions` and `POST /v1/completions` (plain JSON, or server-sent events in OpenAI's chunk
format with `stream: true`), `GET /v1/models`, `GET /health`, and the web chat page at `GET /`. Every request,
streamed or not, is one or more engine `Request`s (`n` choices are `n` requests, seeds seed+i) that join the
engine's shared batch; the engine runs in its own thread, started and stopped with the app's lifespan.

The one decision a reader would question: the API key is checked by a tiny ASGI middleware in front of FastAPI,
not by a route dependency, so a request without the key is refused before its body is read or parsed — malformed
JSON from a stranger gets 401, not a parse error that tells them anything. Keys are compared in constant time.

Failure modes are answers, never a dead server: a body pydantic refuses, a prompt past the context, an unknown
route → 4xx with OpenAI's error JSON; anything unexpected → 500 with the same shape. A client that goes away
(a closed stream, or a disconnect while waiting for a plain answer) cancels its requests, which frees the slots.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from importlib import resources
from typing import Any

from fastapi import FastAPI
from fastapi import Request as HTTPRequest
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from kamado.errors import KamadoError
from kamado.serve import protocol as P
from kamado.serve.engine import Delta, Engine, GenParams, Request
from kamado.tokenizer import Tokenizer

MAX_CHOICES = 64  # prompts x n in one call
# the page may run inline script and talk to this server only: nothing is fetched from anywhere else
PAGE_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:"
)


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None, type_=None):
        super().__init__(message)
        self.status, self.param, self.code = status, param, code
        self.type = type_ or ("invalid_request_error" if status < 500 else "server_error")


class BearerAuth:
    """Refuse every `/v1` call whose `Authorization` header is not exactly `Bearer KEY` (constant-time compare)."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app, self.expected = app, f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1"):
            given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
            if not hmac.compare_digest(given, self.expected):
                body = P.error_body(
                    "Incorrect or missing API key: send the header `Authorization: Bearer KEY`.",
                    code="invalid_api_key",
                )
                headers = {"WWW-Authenticate": "Bearer"}
                return await JSONResponse(body, 401, headers=headers)(scope, receive, send)
        await self.app(scope, receive, send)


class EventStream(StreamingResponse):
    """Server-sent events that cancel their engine requests however the response ends (done, client gone)."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[str], requests: Sequence[Request]) -> None:
        super().__init__(events, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.requests = requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            cancel(self.requests)


def cancel(requests: Sequence[Request]) -> None:
    for r in requests:
        if not r.done:
            r.cancel()


def sse(data: Any) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def merged(requests: Sequence[Request]) -> AsyncIterator[tuple[int, Delta]]:
    """(choice index, delta) from all requests as they come, until each has finished."""
    q: asyncio.Queue[tuple[int, Delta]] = asyncio.Queue()

    async def pump(i: int, r: Request) -> None:
        async for d in r.astream():
            q.put_nowait((i, d))

    tasks = [asyncio.create_task(pump(i, r)) for i, r in enumerate(requests)]
    try:
        left = len(requests)
        while left:
            i, d = await q.get()
            yield i, d
            left -= d.finish_reason is not None
    finally:
        for t in tasks:
            t.cancel()


def create_app(engine: Engine, tokenizer: Tokenizer, model_name: str, api_key: str | None = None) -> FastAPI:
    """The server around a (not yet started) engine: the lifespan starts its thread and stops it at shutdown."""
    page = resources.files("kamado.serve").joinpath("static/chat.html").read_text(encoding="utf-8")
    try:  # ends an assistant turn, where the vocabulary has it
        chat_stops: tuple[int, ...] = (tokenizer.token_id("<|im_end|>"),)
    except KamadoError:
        chat_stops = ()
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            engine.stop()

    app = FastAPI(title="kamado", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    if api_key:
        app.add_middleware(BearerAuth, api_key=api_key)

    @app.exception_handler(APIError)
    async def _api_error(_: HTTPRequest, e: APIError) -> JSONResponse:
        return JSONResponse(P.error_body(str(e), e.type, e.param, e.code), e.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: HTTPRequest, e: RequestValidationError) -> JSONResponse:
        return JSONResponse(P.validation_error_body(e.errors()), 400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: HTTPRequest, e: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if e.status_code < 500 else "server_error"
        return JSONResponse(P.error_body(str(e.detail), kind), e.status_code, headers=e.headers)

    @app.exception_handler(KamadoError)
    async def _kamado(_: HTTPRequest, e: KamadoError) -> JSONResponse:
        return JSONResponse(P.error_body(str(e)), 400)

    @app.exception_handler(Exception)
    async def _unexpected(_: HTTPRequest, e: Exception) -> JSONResponse:
        return JSONResponse(P.error_body(f"internal error: {type(e).__name__}", "server_error"), 500)

    @app.get("/", include_in_schema=False)
    async def chat_page() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"})

    @app.get("/health")
    async def health() -> JSONResponse:
        alive = engine.running
        body = {
            "status": "ok" if alive else "engine stopped",
            "model": model_name,
            "running": sum(s is not None for s in engine.slots),
            "waiting": len(engine.waiting),
            "slots": len(engine.slots),
        }
        return JSONResponse(body, 200 if alive else 503)

    def model_card() -> dict[str, Any]:
        card = {"id": model_name, "object": "model", "created": started, "owned_by": "kamado"}
        return {**card, "max_model_len": engine.max_len}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    def check_model(name: str | None) -> None:
        if name is not None and name != model_name:
            message = f"The model '{name}' does not exist; this server serves '{model_name}'."
            raise APIError(404, message, "model", "model_not_found")

    @app.get("/v1/models/{name}")
    async def model(name: str) -> dict[str, Any]:
        check_model(name)
        return model_card()

    @app.post("/v1/chat/completions")
    async def chat_completions(body: P.ChatCompletionRequest, http: HTTPRequest) -> Any:
        messages = [m.as_template_message() for m in body.messages]
        ids = await run_in_threadpool(tokenizer.encode_chat, messages)
        return await complete(body, [ids], http, chat=True)

    @app.post("/v1/completions")
    async def completions(body: P.CompletionRequest, http: HTTPRequest) -> Any:
        texts = body.prompts()
        if len(texts) * body.n > MAX_CHOICES:
            raise APIError(400, f"{len(texts)} prompts x n={body.n} is more than {MAX_CHOICES} choices", "n")
        strings = [t for t in texts if isinstance(t, str)]
        encoded = iter(await run_in_threadpool(tokenizer.encode_batch, strings) if strings else [])
        prompts = [next(encoded) if isinstance(t, str) else t for t in texts]
        return await complete(body, prompts, http, chat=False)

    async def complete(body: P.SamplingFields, prompts: list[list[int]], http: HTTPRequest, chat: bool) -> Any:
        check_model(body.model)
        limit = body.token_limit()
        params = [
            GenParams(
                max_tokens=limit,
                temperature=1.0 if body.temperature is None else body.temperature,
                top_k=body.top_k or 0,
                top_p=1.0 if body.top_p is None else body.top_p,
                seed=None if body.seed is None else body.seed + i,
                stop=body.stop_strings(),
                stop_token_ids=chat_stops if chat else (),
            )
            for i in range(len(prompts) * body.n)
        ]
        prompt_param = "messages" if chat else "prompt"
        limit_param = "max_completion_tokens" if getattr(body, "max_completion_tokens", None) else "max_tokens"
        for ids in prompts:  # the prompt alone, then with the answer's length: the error names the culprit
            for param, p in ((prompt_param, replace(params[0], max_tokens=None)), (limit_param, params[0])):
                try:
                    engine.check(ids, p)
                except ValueError as e:
                    code = "context_length_exceeded" if "context" in str(e) else None
                    raise APIError(400, str(e), param, code) from None
        reqs = [engine.submit(prompts[i // body.n], p, loop=asyncio.get_running_loop()) for i, p in enumerate(params)]
        n_prompt = sum(len(p) for p in prompts)
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        if body.stream:
            return EventStream(stream_events(rid, reqs, n_prompt, chat, body.include_usage()), reqs)
        try:
            if not await wait_all(reqs, http):
                return JSONResponse(P.error_body("client disconnected"), 499)
        finally:
            cancel(reqs)
        if any(r.finish_reason == "error" for r in reqs):
            raise APIError(500, "the engine failed while generating this answer (see the server log)")
        use = P.usage(n_prompt, sum(len(r.token_ids) for r in reqs))
        return P.response(chat, rid, model_name, [r.text for r in reqs], [str(r.finish_reason) for r in reqs], use)

    async def stream_events(
        rid: str, reqs: list[Request], n_prompt: int, chat: bool, include_usage: bool
    ) -> AsyncIterator[str]:
        created = int(time.time())
        extra = {"use": None} if include_usage else {}

        def event(*choices: dict[str, Any]) -> str:
            return sse(P.chunk(chat, rid, model_name, created, list(choices), **extra))

        try:
            if chat:  # OpenAI opens each choice with the role
                for i in range(len(reqs)):
                    yield event(P.role_choice(i))
            async for i, d in merged(reqs):
                if d.finish_reason == "error":
                    yield sse(P.error_body("the engine failed while generating this answer", "server_error"))
                    break
                if d.text:
                    yield event(P.stream_choice(chat, i, d.text))
                if d.finish_reason is not None:
                    yield event(P.stream_choice(chat, i, None, d.finish_reason))
            else:
                if include_usage:
                    use = P.usage(n_prompt, sum(len(r.token_ids) for r in reqs))
                    yield sse(P.chunk(chat, rid, model_name, created, [], use=use))
        except Exception as e:  # headers are sent: the error can only be an event
            yield sse(P.error_body(f"internal error: {type(e).__name__}", "server_error"))
        yield "data: [DONE]\n\n"

    return app


async def wait_all(reqs: Sequence[Request], http: HTTPRequest, poll_s: float = 0.5) -> bool:
    """Wait until every request has finished; False (and nothing waited for) once the client has gone away."""

    async def drain(r: Request) -> None:
        async for _ in r.astream():
            pass

    everything = asyncio.ensure_future(asyncio.gather(*(drain(r) for r in reqs)))
    everything.add_done_callback(lambda f: f.cancelled() or f.exception())  # an outcome nobody waits for is no error
    try:
        while True:
            done, _ = await asyncio.wait({everything}, timeout=poll_s)
            if done:
                everything.result()
                return True
            if await http.is_disconnected():
                return False
    finally:
        everything.cancel()
