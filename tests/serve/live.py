"""A real uvicorn server on a free loopback port, in a thread of the test process (shared by the server tests)."""

from __future__ import annotations

import threading
import time
from typing import Any

import uvicorn

from kamado.serve.commands import bind_socket, url_of


class LiveServer:
    """`with LiveServer(app) as url:` serves `app` at url (http://127.0.0.1:PORT/) until the block ends."""

    def __init__(self, app: Any) -> None:
        self.sock = bind_socket("127.0.0.1", 0)
        self.url = url_of(self.sock)
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        return self.url

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()
