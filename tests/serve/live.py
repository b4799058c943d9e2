"""A real uvicorn server on a free loopback port, in a thread of the test process (shared by the server tests):
`kamado.serve.background.BackgroundServer`, which the recipe's offline judge uses too."""

from kamado.serve.background import BackgroundServer as LiveServer

__all__ = ["LiveServer"]
