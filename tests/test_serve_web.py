"""The web chat page in a real browser: headless system Chromium driven by Playwright.

Send a message and see streamed tokens, the token count and cost; stop a slow answer;
attach a picture (the tiny model has no vision: the page shows the server's 400).
"""

import base64
import os
import shutil
import time

import pytest

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("GLASSGPT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")


@pytest.fixture(scope="module")
def browser_page(tmp_path_factory):
    if not os.path.exists(CHROMIUM):
        pytest.skip("no system Chromium (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    from glassgpt.serve.api import create_app
    from glassgpt.serve.engine import Engine
    from glassgpt.serve.store import Store
    from glassgpt.serve.testing import ServerThread, tiny_checkpoint

    tmp = tmp_path_factory.mktemp("web")
    store = Store(tmp / "web.db")
    key, _ = store.create_key("browser")
    engine = Engine.from_checkpoint(tiny_checkpoint(), name="tiny", device="cpu", max_batch=4)
    with ServerThread(create_app([engine], store)) as srv, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(srv.url + "/")
        page.fill("#apikey", key)
        page.dispatch_event("#apikey", "change")
        page.wait_for_function("document.querySelector('#model').options.length > 0")
        yield {"page": page, "engine": engine, "store": store, "url": srv.url, "tmp": tmp}
        browser.close()


def test_send_message_streams_and_counts(browser_page):
    page = browser_page["page"]
    assert page.input_value("#model") == "tiny"
    page.fill("#input", "hello there")
    page.press("#input", "Enter")
    page.wait_for_selector(".msg.assistant:not(.streaming)", timeout=60_000)
    answer = page.text_content(".msg.assistant .text")
    assert answer  # tokens arrived
    assert page.text_content(".msg.user .text") == "hello there"
    usage = page.text_content("#usage")
    n, cost = int(usage.split(" tokens")[0]), float(usage.split("$")[1])
    assert n > 0 and cost == pytest.approx(n * 0.002 / 1000, abs=1e-6)  # gpt-3.5-turbo's launch price
    page.screenshot(path=str(browser_page["tmp"] / "chat.png"))


def test_stop_button(browser_page):
    page, engine = browser_page["page"], browser_page["engine"]
    real = engine._sample

    def slow(seq, logits):  # slow the model down so there is time to press stop
        time.sleep(0.15)
        return real(seq, logits)

    engine._sample = slow
    page.click("#new")  # a fresh conversation: the tiny model's context is 64 tokens
    try:
        n_before = page.locator(".msg.assistant").count()
        page.fill("#input", "tell me a long story")
        page.click("#send")
        page.wait_for_selector("#stop:not([hidden])")
        page.wait_for_function(
            f"document.querySelectorAll('.msg.assistant')[{n_before}]?.querySelector('.text').textContent.length > 0",
            timeout=30_000)
        page.click("#stop")
        page.wait_for_selector("#stop[hidden]", state="attached")
        last = page.locator(".msg.assistant").nth(n_before)
        assert "(stopped)" in last.text_content()
        assert not page.is_disabled("#send")
    finally:
        del engine._sample
    store = browser_page["store"]
    for _ in range(100):
        if store.db.execute("SELECT COUNT(*) FROM usage WHERE status = 'cancelled'").fetchone()[0]:
            break
        time.sleep(0.1)
    assert store.db.execute("SELECT COUNT(*) FROM usage WHERE status = 'cancelled'").fetchone()[0] == 1


def test_attach_picture(browser_page):
    page = browser_page["page"]
    # the model has no vision encoder: the attach button says so
    assert page.is_disabled("#attach")
    assert "no image input" in page.get_attribute("#attach", "title")
    # attach anyway (as a page for a vision model would) and see the server's answer
    page.click("#new")
    png = browser_page["tmp"] / "dot.png"
    png.write_bytes(PNG)
    page.set_input_files("#file", str(png))
    page.wait_for_selector("#attachments img")
    page.fill("#input", "what is in this picture?")
    page.press("#input", "Enter")
    page.wait_for_selector(".msg.error", timeout=30_000)
    assert "no image input" in page.text_content(".msg.error")
    assert page.locator(".msg.user img").count() == 1
