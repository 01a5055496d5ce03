"""The chat page runs under its Content-Security-Policy: sending a message works and the
browser reports no CSP violation (scripts and styles come from files, none inline)."""

import os
import shutil

import pytest

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("GLASSGPT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


def test_page_works_under_its_csp(tmp_path):
    if not os.path.exists(CHROMIUM):
        pytest.skip("no system Chromium (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    from glassgpt.serve.api import create_app
    from glassgpt.serve.engine import Engine
    from glassgpt.serve.store import Store
    from glassgpt.serve.testing import ServerThread, tiny_checkpoint

    store = Store(tmp_path / "csp.db")
    key, _ = store.create_key("browser")
    # 128 positions: the default system prompt and a question take ~70 of them
    engine = Engine.from_checkpoint(tiny_checkpoint(seq_len=128), name="tiny", device="cpu", max_batch=2)
    with ServerThread(create_app([engine], store)) as srv, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            seen = []
            page.on("console", lambda m: seen.append(m.text))
            page.on("pageerror", lambda e: seen.append(f"page error: {e}"))
            resp = page.goto(srv.url + "/")
            assert "script-src 'self'" in resp.headers["content-security-policy"]
            page.fill("#apikey", key)
            page.dispatch_event("#apikey", "change")
            page.wait_for_selector("#model option", state="attached", timeout=30_000)
            page.fill("#input", "**bold** and `code`")
            page.press("#input", "Enter")
            page.wait_for_selector(".msg.assistant:not(.streaming)", timeout=60_000)
            assert page.text_content(".msg.assistant .text")
            assert not [m for m in seen if "Content Security Policy" in m or m.startswith("page error")], seen
        finally:
            browser.close()
