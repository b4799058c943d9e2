"""The web chat page at `/`, in a real headless Chromium (the system's `chromium`, driven by Playwright; no browser
is downloaded), against a live server: a Japanese message gets a streamed reply, the stop button stops it and frees
the slot, the conversation is multi-turn, model output is text and never HTML, and the API key field works."""

from __future__ import annotations

import json
import re
import shutil
import time

import pytest

from kamado.serve.engine import Engine, GenParams
from kamado.serve.load import load_for_serving
from kamado.serve.server import create_app

from .live import LiveServer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no system Chromium on PATH (Debian: apt-get install chromium); .ci/run installs it"
)
ASK = "こんにちは。吾輩は猫である、の続きを書いてください。"
STREAMING = "document.querySelector('.msg.assistant.streaming')?.textContent.length > 0"


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM)
        yield b
        b.close()


def serve(served_run, api_key=None):
    """A server whose engine takes >= 20 ms a token, so that a reply is visibly streamed and can be stopped."""
    model, tok, name = load_for_serving(served_run)
    model.layers[0].register_forward_pre_hook(lambda *_: time.sleep(0.02))
    engine = Engine(model, tok, max_batch=2)
    return LiveServer(create_app(engine, tok, name, api_key)), engine, tok, name


def open_page(browser, url):
    page = browser.new_page()
    outside, errors = [], []
    page.on("request", lambda r: None if r.url.startswith(url) else outside.append(r.url))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.set_default_timeout(15_000)
    page.goto(url)
    return page, outside, errors


def wait_until(page, predicate: str, timeout: float = 15) -> None:
    """Poll a JS expression from Python: the page's CSP (no eval) stops Playwright's own wait_for_function."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(predicate):
        assert time.monotonic() < deadline, f"timed out waiting for {predicate}: {page.inner_text('#messages')}"
        time.sleep(0.005)


def settings(page, **values: str) -> None:
    """Open the settings panel (as a user would) and fill the named fields."""
    if not page.evaluate("document.getElementById('settings').open"):
        page.click("#settings summary")
    for field, value in values.items():
        page.fill(f"#{field}", value)


def reply_text(page, i=-1) -> str:
    """The text of an assistant bubble without its meta line (finish reason, token counts)."""
    return page.locator(".msg.assistant").nth(i).evaluate("m => m.firstChild ? m.firstChild.textContent : ''")


def test_a_japanese_message_gets_a_streamed_reply_and_the_stop_button_stops_the_next(browser, served_run):
    from playwright.sync_api import expect

    live, engine, tok, name = serve(served_run)
    with live as url:
        page, outside, errors = open_page(browser, url)
        expect(page.locator("#model")).to_contain_text(name)
        assert page.evaluate("document.characterSet") == "UTF-8"
        assert "Noto Sans CJK JP" in page.evaluate("getComputedStyle(document.body).fontFamily")
        settings(page, temperature="0", max_tokens="40")
        page.fill("#input", ASK)
        page.click("#send")
        expect(page.locator(".msg.user").first).to_have_text(ASK)
        wait_until(page, STREAMING)  # part of the reply is on screen while the rest is still coming
        partial = reply_text(page)
        expect(page.locator(".msg.assistant").first).not_to_have_class(re.compile("streaming"), timeout=30_000)
        final = reply_text(page)
        stops = (tok.token_id("<|im_end|>"),)
        want = Engine(load_for_serving(served_run)[0], tok).generate(
            [tok.encode_chat([{"role": "user", "content": ASK}])],
            GenParams(max_tokens=40, temperature=0, stop_token_ids=stops),
        )[0]
        assert final == want.text and final.startswith(partial) and len(partial) < len(final)
        expect(page.locator(".msg.assistant .meta").first).to_contain_text("tokens")

        # a second turn carries the first; the stop button ends it and the server frees the slot
        settings(page, max_tokens="80")  # fits beside the first turn in the 256-token context
        page.fill("#input", "もっと長く")
        page.click("#send")
        wait_until(page, STREAMING)
        running = next(r for r in engine.slots if r is not None)
        history = [{"role": "user", "content": ASK}, {"role": "assistant", "content": final}]
        assert running.prompt_ids == tok.encode_chat([*history, {"role": "user", "content": "もっと長く"}])
        page.click("#stop")
        expect(page.locator(".msg.assistant").nth(1)).not_to_have_class(re.compile("streaming"))
        expect(page.locator(".msg.assistant .meta").nth(1)).to_contain_text("stopped")
        assert running.result(timeout=10).finish_reason == "cancelled" and len(running.token_ids) < 80
        assert page.is_enabled("#send") and not page.is_enabled("#stop")
        assert not outside and not errors, (outside, errors)


def test_model_output_is_inserted_as_text_never_as_html(browser, served_run):
    """The reply is taken from a stubbed stream full of markup: it must show as characters, with no element made."""
    live, *_ = serve(served_run)
    evil = '<img src=x onerror="window.pwned=1"><b>太字</b>'
    chunks = [evil[:9], evil[9:25], evil[25:]]
    sse = "".join(f"data: {json.dumps({'choices': [{'index': 0, 'delta': {'content': c}}]})}\n\n" for c in chunks)
    sse += "data: [DONE]\n\n"
    with live as url:
        page, _, errors = open_page(browser, url)
        page.route("**/v1/chat/completions", lambda route: route.fulfill(body=sse, content_type="text/event-stream"))
        page.fill("#input", "<script>window.pwned=2</script>")
        page.click("#send")
        wait_until(page, "!document.querySelector('.msg.assistant.streaming')")
        assert reply_text(page) == evil
        assert page.locator(".msg.user").first.inner_text() == "<script>window.pwned=2</script>"
        assert page.locator("#messages img, #messages b, #messages script").count() == 0
        assert page.evaluate("window.pwned === undefined") and not errors


def test_the_api_key_field_is_used_and_remembered(browser, served_run):
    from playwright.sync_api import expect

    live, *_ = serve(served_run, api_key="page-key")
    with live as url:
        page, _, _ = open_page(browser, url)
        expect(page.locator("#model")).to_contain_text("API key needed")
        settings(page, temperature="0", max_tokens="5")
        page.fill("#input", "鍵なし")
        page.click("#send")
        expect(page.locator(".msg.error")).to_contain_text("API key")
        settings(page, api_key="page-key")
        page.dispatch_event("#api_key", "change")
        expect(page.locator("#model")).to_contain_text("tiny-chat")
        page.fill("#input", "鍵あり")
        page.click("#send")
        expect(page.locator(".msg.assistant .meta")).to_contain_text("length")
        page.reload()  # stored in this browser's localStorage
        expect(page.locator("#model")).to_contain_text("tiny-chat")
        assert page.input_value("#api_key") == "page-key"
