"""The web chat page in a real browser: headless system Chromium driven by Playwright.

Send a message and see streamed tokens, the token count and cost; stop a slow answer;
attach a picture (the tiny model has no vision: the page shows the server's 400).
Conversations in the sidebar (kept across reloads, renamed, deleted), the system prompt,
regenerate, edit-and-resend, Markdown rendered safely, Enter during IME composition, usage
per conversation, and the page under a strict Content-Security-Policy. The tiny model's text
is random, so where the test needs known text the streaming response is mocked in the browser.
"""

import base64
import json
import os
import shutil
import time
from contextlib import contextmanager

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
    # 128 positions: the default system prompt and a question take ~70 of them
    engine = Engine.from_checkpoint(tiny_checkpoint(seq_len=128), name="tiny", device="cpu", max_batch=4)
    with ServerThread(create_app([engine], store)) as srv, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 800}, bypass_csp=True)  # wait_for_function evaluates strings; the page itself runs under its CSP (test_strict_csp)
        page.goto(srv.url + "/")
        page.fill("#apikey", key)
        page.dispatch_event("#apikey", "change")
        page.wait_for_function("document.querySelector('#model').options.length > 0")
        yield {"page": page, "engine": engine, "store": store, "url": srv.url, "tmp": tmp, "browser": browser,
               "key": key}
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
    # the header names the model with what /v1/models reports, and no stage the server did not send
    assert page.text_content("#model-info .model-id") == "tiny"
    assert page.text_content("#model-info .model-owner") == "by glassgpt"
    assert "128-token context" in page.text_content("#model-info")
    # the stage /v1/models reports (a plain training run: "base"), and nothing else
    assert page.text_content("#model-info .model-stage") == "stage: " + browser_page["engine"].stage
    page.screenshot(path=str(browser_page["tmp"] / "chat.png"))


def test_stop_button(browser_page):
    page, engine = browser_page["page"], browser_page["engine"]
    real = engine._sample

    def slow(seq, logits):  # slow the model down so there is time to press stop
        time.sleep(0.15)
        return real(seq, logits)

    engine._sample = slow
    page.click("#new")  # a fresh conversation: the tiny model's context is 128 tokens
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
    # the failed turn is not part of the conversation: the next question goes without it
    with mocked(page, "fine") as bodies:
        ask(page, "a text question")
    assert bodies[0]["messages"][1:] == [{"role": "user", "content": "a text question"}]
    assert page.locator(".msg.user img").count() == 0


# --- helpers: a clean page, a mocked streaming answer, waiting for the answer --------------------
from glassgpt.data.chat import DEFAULT_SYSTEM  # noqa: E402  (the one string; app.js has the same, tested)
CHAT_URL = "**/v1/chat/completions"


def fresh(page):
    """Forget every conversation (the API key stays) and reload."""
    page.evaluate("localStorage.removeItem('glassgpt.conversations'); localStorage.removeItem('glassgpt.current')")
    reload(page)


def reload(page):
    page.reload()
    page.wait_for_function("document.querySelector('#model').options.length > 0")


def sse(text, prompt_tokens=11, completion_tokens=7):
    """An OpenAI-style stream that delivers `text` in three pieces, then the usage chunk."""
    base = {"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 0, "model": "tiny"}
    cut = [0, len(text) // 3, 2 * len(text) // 3, len(text)]
    chunks = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}]
    chunks += [{**base, "choices": [{"index": 0, "delta": {"content": text[a:b]}, "finish_reason": None}]}
               for a, b in zip(cut, cut[1:])]
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    chunks.append({**base, "choices": [], "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                                    "total_tokens": prompt_tokens + completion_tokens}})
    return "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"


@contextmanager
def mocked(page, *answers):
    """Answer the page's chat requests with `answers` in turn (the last one repeats); yields the
    request bodies the page sent."""
    bodies, queue = [], list(answers)

    def handle(route):
        bodies.append(json.loads(route.request.post_data))
        text = queue.pop(0) if len(queue) > 1 else queue[0]
        route.fulfill(status=200, headers={"content-type": "text/event-stream"}, body=sse(text))

    page.route(CHAT_URL, handle)
    try:
        yield bodies
    finally:
        page.unroute(CHAT_URL, handle)


def settle(page):
    """Wait until no answer is streaming (busy(true) is set synchronously by the send itself)."""
    page.wait_for_function("document.querySelector('#stop').hidden && !document.querySelector('.msg.streaming')",
                           timeout=60_000)


def ask(page, text):
    page.fill("#input", text)
    page.press("#input", "Enter")
    settle(page)


def texts(page, sel=".msg .text"):
    """The visible text of each match, ends trimmed (rendered Markdown ends in a newline)."""
    return [t.strip() for t in page.locator(sel).all_text_contents()]


def titles(page):
    return page.locator("#conversations .conv .title").all_text_contents()


def saved(page):
    return page.evaluate("JSON.parse(localStorage.getItem('glassgpt.conversations'))")


def test_conversations_survive_reload_rename_delete(browser_page):
    page = browser_page["page"]
    fresh(page)
    with mocked(page, "first answer", "second answer"):
        ask(page, "alpha question")
        page.click("#new")
        assert page.locator("#messages .msg").count() == 0  # the new chat starts empty
        ask(page, "beta question")
    assert titles(page) == ["beta question", "alpha question"]  # newest first, named by the first question

    reload(page)
    assert titles(page) == ["beta question", "alpha question"]
    assert page.text_content(".conv.active .title") == "beta question"  # the open one stays open
    assert texts(page, ".msg.user .text") == ["beta question"]
    page.click(".conv:has-text('alpha question') .title")
    assert texts(page) == ["alpha question", "first answer"]

    page.click(".conv.active .rename")
    page.fill(".rename-input", "Renamed chat")
    page.press(".rename-input", "Enter")
    assert sorted(titles(page)) == ["Renamed chat", "beta question"]
    reload(page)
    assert sorted(titles(page)) == ["Renamed chat", "beta question"]

    page.hover(".conv:has-text('beta question')")
    page.click(".conv:has-text('beta question') .delete")
    assert len(titles(page)) == 2  # the first click only asks
    page.click(".conv:has-text('beta question') .delete")
    assert titles(page) == ["Renamed chat"]
    reload(page)
    assert titles(page) == ["Renamed chat"]
    assert [c["title"] for c in saved(page)] == ["Renamed chat"]


def test_system_prompt_is_sent_first(browser_page):
    page = browser_page["page"]
    fresh(page)
    assert page.get_attribute("#system", "placeholder") == DEFAULT_SYSTEM
    with mocked(page, "ok") as bodies:
        ask(page, "hi")
        page.click("#system-box summary")
        page.fill("#system", "Answer in French.")
        ask(page, "again")
        page.click("#new")
        assert page.input_value("#system") == ""  # per conversation: a new chat starts with the default
        ask(page, "other chat")
    # an empty field sends the default the placeholder shows
    assert bodies[0]["messages"] == [{"role": "system", "content": DEFAULT_SYSTEM}, {"role": "user", "content": "hi"}]
    assert bodies[1]["messages"] == [{"role": "system", "content": "Answer in French."},
                                     {"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"},
                                     {"role": "user", "content": "again"}]
    assert bodies[2]["messages"][0] == {"role": "system", "content": DEFAULT_SYSTEM}
    page.click(".conv:has-text('hi') .title")
    assert page.input_value("#system") == "Answer in French."
    reload(page)
    assert page.input_value("#system") == "Answer in French."


def test_regenerate_replaces_the_last_answer(browser_page):
    page = browser_page["page"]
    fresh(page)
    with mocked(page, "answer one", "answer two") as bodies:
        ask(page, "question")
        assert texts(page, ".msg.assistant .text") == ["answer one"]
        assert page.locator(".msg.user .regenerate").count() == 0  # only the last answer regenerates
        page.click(".msg.assistant .regenerate")
        settle(page)
    assert texts(page) == ["question", "answer two"]
    # the old answer is not shown to the model again: the same question is asked afresh
    assert bodies[1]["messages"] == bodies[0]["messages"]
    assert [m["content"] for m in saved(page)[0]["messages"]] == ["question", "answer two"]


def test_edit_and_resend_cuts_the_conversation(browser_page):
    page = browser_page["page"]
    fresh(page)
    with mocked(page, "a1", "a2", "a3") as bodies:
        ask(page, "first question")
        ask(page, "second question")
        assert page.locator(".msg").count() == 4
        page.locator(".msg.user .edit").first.click()
        assert page.input_value(".edit-input") == "first question"
        page.fill(".edit-input", "first question, edited")
        page.click(".edit-box .save")
        settle(page)
    assert texts(page) == ["first question, edited", "a3"]
    assert bodies[2]["messages"] == [{"role": "system", "content": DEFAULT_SYSTEM},
                                     {"role": "user", "content": "first question, edited"}]
    assert [m["content"] for m in saved(page)[0]["messages"]] == ["first question, edited", "a3"]


PAYLOAD = """Here is the code:

```python
print('hi')
```

**bold** and `inline`.

<script>window.__pwned = 'script'</script>

<img src="x" onerror="window.__pwned = 'onerror'">

<a href="#" onclick="window.__pwned = 'onclick'">click</a> [link](javascript:window.__pwned='href')
"""


def test_markdown_is_rendered_safely_with_a_copy_button(browser_page):
    page = browser_page["page"]
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=browser_page["url"])
    fresh(page)
    with mocked(page, PAYLOAD):
        ask(page, "show me code")
    msg = page.locator(".msg.assistant .text")
    assert msg.locator(".codeblock pre code.language-python").text_content().strip() == "print('hi')"
    assert msg.locator(".codebar").text_content().startswith("python")
    assert msg.locator("strong").text_content() == "bold"
    assert msg.locator("p code").text_content() == "inline"

    def no_live_payload():
        page.wait_for_timeout(300)  # time for an onerror to fire had the image been created
        assert page.evaluate("window.__pwned") is None
        for sel in ("script", "img", "[onerror]", "[onclick]", "a[href^='javascript']"):
            assert page.locator("#messages " + sel).count() == 0, sel
        # the model's raw HTML is shown as the text it wrote
        assert "<script>window.__pwned = 'script'</script>" in msg.text_content()

    no_live_payload()
    page.click(".msg.assistant .codeblock .copy")
    page.wait_for_function("document.querySelector('.codeblock .copy').textContent === 'Copied'")
    assert page.evaluate("navigator.clipboard.readText()").strip() == "print('hi')"
    page.locator("#messages a", has_text="link").click()  # clicking the defanged link runs nothing
    assert page.evaluate("window.__pwned") is None
    reload(page)  # rendered again from localStorage: just as safe
    no_live_payload()


def test_enter_while_composing_does_not_send(browser_page):
    page = browser_page["page"]
    fresh(page)
    with mocked(page, "你好！") as bodies:
        page.fill("#input", "你好")
        page.evaluate("""() => {
            const input = document.querySelector('#input');
            input.dispatchEvent(new CompositionEvent('compositionstart', {bubbles: true, data: ''}));
            input.dispatchEvent(new CompositionEvent('compositionupdate', {bubbles: true, data: 'nihao'}));
            // the Enter that picks the IME candidate
            input.dispatchEvent(new KeyboardEvent('keydown', {key: 'Enter', code: 'Enter', bubbles: true,
                                                              cancelable: true, isComposing: true}));
            input.dispatchEvent(new CompositionEvent('compositionend', {bubbles: true, data: '你好'}));
            // Safari's order: compositionend first, then a keydown with keyCode 229 and isComposing false
            const late = new KeyboardEvent('keydown', {key: 'Enter', bubbles: true, cancelable: true});
            Object.defineProperty(late, 'keyCode', {value: 229});
            input.dispatchEvent(late);
        }""")
        page.wait_for_timeout(300)
        assert bodies == []
        assert page.locator("#messages .msg").count() == 0
        assert page.input_value("#input") == "你好"
        page.press("#input", "Enter")  # composition over: Enter sends
        settle(page)
    assert len(bodies) == 1 and bodies[0]["messages"][-1] == {"role": "user", "content": "你好"}
    assert texts(page) == ["你好", "你好！"]


def test_usage_per_conversation_adds_up(browser_page):
    """The real tiny model: each request's usage as it came over the wire, summed per conversation."""
    page, store = browser_page["page"], browser_page["store"]
    fresh(page)
    seen = []

    def tap(route):  # pass the request through and read the usage chunk the server sent
        resp = route.fetch()
        body = resp.text()
        for line in body.splitlines():
            if line.startswith("data: {") and '"usage"' in line:
                u = json.loads(line[6:])["usage"]
                if u:
                    seen.append(u)
        route.fulfill(response=resp, body=body)

    def shown():
        text = page.text_content("#usage")
        return int(text.split(" tokens")[0]), float(text.split("$")[1])

    first_row = store.db.execute("SELECT COALESCE(MAX(n), 0) FROM usage").fetchone()[0]
    page.route(CHAT_URL, tap)
    try:
        # the tiny model fills its 128-token context in one answer, so the second request of the
        # conversation regenerates (same prompt) rather than asks a follow-up
        ask(page, "hello")
        page.click(".msg.assistant .regenerate")
        settle(page)
        assert len(seen) == 2
        a_tokens = sum(u["prompt_tokens"] + u["completion_tokens"] for u in seen)
        assert shown() == (a_tokens, pytest.approx(a_tokens * 0.002 / 1000, abs=1e-6))
        page.click("#new")
        assert shown() == (0, 0.0)
        ask(page, "another")
        assert len(seen) == 3
        b_tokens = seen[2]["prompt_tokens"] + seen[2]["completion_tokens"]
        assert shown()[0] == b_tokens
    finally:
        page.unroute(CHAT_URL, tap)
    page.click(".conv:has-text('hello') .title")
    assert shown()[0] == a_tokens
    reload(page)
    assert shown()[0] == a_tokens
    # and the page's totals agree with what the server metered for these three requests
    metered = store.db.execute("SELECT SUM(prompt_tokens + completion_tokens), COUNT(*) FROM usage WHERE n > ?",
                               (first_row,)).fetchone()
    assert metered == (a_tokens + b_tokens, 3)


CSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'"


def test_page_works_under_a_strict_content_security_policy(browser_page):
    """No inline script, no inline handler, no eval: the page runs with script-src 'self'."""
    context = browser_page["browser"].new_context()
    page = context.new_page()
    try:
        def with_csp(route):
            resp = route.fetch()
            route.fulfill(response=resp, headers={**resp.headers, "content-security-policy": CSP})

        page.route(browser_page["url"] + "/", with_csp)
        violations = []
        page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
        page.goto(browser_page["url"] + "/")
        page.fill("#apikey", browser_page["key"])
        page.dispatch_event("#apikey", "change")
        # selector waits, not wait_for_function: its predicate is a string eval'd in the page,
        # which this very policy forbids
        page.wait_for_selector("#model option", state="attached")
        with mocked(page, PAYLOAD):
            page.fill("#input", "show me code")
            page.press("#input", "Enter")
            page.wait_for_selector(".msg.assistant:not(.streaming) .codeblock")
            page.wait_for_selector("#stop[hidden]", state="attached")
        assert page.locator(".msg.assistant .codeblock .copy").count() == 1  # Markdown and the buttons ran
        page.click(".msg.user .edit")
        assert page.locator(".edit-input").count() == 1  # handlers attached by script work
        assert page.evaluate("window.__pwned") is None
        assert violations == []
        # and the policy was in force: an inline script added to the page does not run
        assert page.evaluate("""() => { const s = document.createElement('script');
            s.textContent = 'window.__inline = 1'; document.head.append(s); return window.__inline; }""") is None
    finally:
        context.close()


def test_screenshot_with_two_conversations(browser_page):
    """A page with two conversations and a code answer; GLASSGPT_SCREENSHOT=path keeps a copy."""
    page = browser_page["page"]
    fresh(page)
    with mocked(page, "Python's `sorted` returns a new list; `list.sort()` sorts in place.",
                "Use a dictionary comprehension:\n\n```python\nsquares = {n: n * n for n in range(5)}\n"
                "print(squares)  # {0: 0, 1: 1, 2: 4, 3: 9, 4: 16}\n```\n\nIt builds the **whole dict** in one "
                "expression."):
        ask(page, "sorted() or list.sort()?")
        page.click("#new")
        ask(page, "How do I build a dict of squares?")
    assert len(titles(page)) == 2 and page.locator(".codeblock").count() == 1
    out = browser_page["tmp"] / "assistant_page.png"
    page.screenshot(path=str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("GLASSGPT_SCREENSHOT"):
        shutil.copy(out, os.environ["GLASSGPT_SCREENSHOT"])


def test_vendored_libraries_are_served(browser_page):
    import httpx

    url = browser_page["url"]
    for name, banner in (("marked.umd.js", b"marked v18.3.0"), ("purify.min.js", b"DOMPurify 3.5.0")):
        r = httpx.get(f"{url}/vendor/{name}")
        assert r.status_code == 200 and banner in r.content[:300]
        assert r.headers["content-type"].startswith("text/javascript")
    # only the shipped scripts: not the README, not a path out of the directory
    for name in ("README.md", "LICENSE.marked", "..%2Fapi.py", "%2E%2E"):
        assert httpx.get(f"{url}/vendor/{name}").status_code == 404, name


def test_switching_away_while_answering_keeps_the_answer(browser_page):
    """The first question of a new chat, still being answered, survives "New chat" and is shown
    streaming when the user comes back to it."""
    page, engine = browser_page["page"], browser_page["engine"]
    fresh(page)
    real = engine._sample

    def slow(seq, logits):
        time.sleep(0.1)
        return real(seq, logits)

    engine._sample = slow
    try:
        page.fill("#input", "first question")
        page.press("#input", "Enter")
        page.wait_for_selector(".msg.assistant.streaming")
        page.click("#new")
        assert page.locator("#messages .msg").count() == 0
        assert len(titles(page)) == 2  # the answering chat kept its place beside the new one
        page.click(".conv:not(.active) .title")
        assert page.locator(".msg.assistant.streaming").count() == 1
        assert texts(page, ".msg.user .text") == ["first question"]
        settle(page)
    finally:
        del engine._sample
    assert "first question" in titles(page)
    chat = next(c for c in saved(page) if c["messages"])
    assert [m["role"] for m in chat["messages"]] == ["user", "assistant"]
