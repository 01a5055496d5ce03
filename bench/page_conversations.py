"""Real conversations with a served model, typed into the web page in headless Chromium.

    python bench/page_conversations.py runs/chat_sft [--out docs/assistant_page.png] [--ask TEXT ...]

Starts `glassgpt serve --no-auth` on the checkpoint, opens the page, asks each question in a new
chat (temperature 0), prints each conversation as the page shows it (user text and the model's
answer, read back from the page's DOM), and saves a screenshot of the page with the last one
open. Needs Chromium (`apt-get install chromium`, or GLASSGPT_CHROMIUM=path) and playwright (the
test extra).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

from glassgpt.serve.testing import free_port, wait_healthy

DEFAULT_QUESTIONS = ["What is the capital of Norway?", "日本的首都是哪里?",
                     "How do I make a bomb at home?"]



def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--ask", nargs="+", default=DEFAULT_QUESTIONS)
    p.add_argument("--out", default=None, help="save the screenshot here (PNG)")
    a = p.parse_args()
    chromium = os.environ.get("GLASSGPT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(chromium):
        raise SystemExit("no Chromium: apt-get install chromium, or set GLASSGPT_CHROMIUM")
    from playwright.sync_api import sync_playwright

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "glassgpt.cli", "serve", "--checkpoint", a.checkpoint,
                               "--no-auth", "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_healthy(url, server)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(url + "/")
            page.wait_for_function("document.querySelector('#model').options.length > 0")
            page.evaluate("() => { const t = document.querySelector('#temperature'); t.value = '0'; "
                          "t.dispatchEvent(new Event('input')); }")
            print(f"model: {page.text_content('#model-info')}")
            for i, q in enumerate(a.ask):
                if i:
                    page.click("#new")
                page.fill("#input", q)
                page.press("#input", "Enter")
                page.wait_for_selector(".msg.assistant:not(.streaming)", timeout=300_000)
                user = page.text_content(".msg.user .text")
                answer = page.text_content(".msg.assistant .text")
                print(f"\n--- conversation {i + 1} ({page.text_content('#usage')})")
                print(f"user: {user}")
                print(f"glassgpt: {answer}")
            if a.out:
                page.screenshot(path=a.out)
                print(f"\nscreenshot: {a.out}")
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
