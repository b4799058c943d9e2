"""A model served in a background thread of this process: `kamado serve` without a terminal, for code that needs an
OpenAI-compatible endpoint of a local model (the recipe's offline judge, tests).

    with serve_in_background("runs/tiny") as (base_url, name):   # base_url: http://127.0.0.1:PORT/v1
        EndpointGenerator(base_url, name).generate(...)

The server binds a free loopback port, runs uvicorn in a thread, and stops (engine thread included) when the block
ends, also when it ends with an exception.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kamado.errors import KamadoError


class BackgroundServer:
    """`with BackgroundServer(app) as url:` serves the ASGI `app` at url (http://127.0.0.1:PORT/) until the block
    ends."""

    def __init__(self, app: Any, host: str = "127.0.0.1") -> None:
        import uvicorn

        from kamado.serve.commands import bind_socket, url_of

        self.sock = bind_socket(host, 0)
        self.url = url_of(self.sock)
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.sock.close()
                raise KamadoError("the background server did not start")
            time.sleep(0.01)
        return self.url

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


@contextlib.contextmanager
def serve_in_background(
    path: str | Path, tokenizer: str | Path | None = None, max_batch: int = 8, device: str = "cpu"
) -> Iterator[tuple[str, str]]:
    """Serve the run or checkpoint at `path` as `kamado serve` would; yields (API base URL ending in /v1, model
    name)."""
    from kamado.serve.engine import Engine
    from kamado.serve.load import load_for_serving, serving_dtype
    from kamado.serve.server import create_app

    model, tok, name = load_for_serving(path, tokenizer, device)
    engine = Engine(model, tok, max_batch=max_batch, dtype=serving_dtype("auto", device))
    with BackgroundServer(create_app(engine, tok, name)) as url:
        yield url + "v1", name
