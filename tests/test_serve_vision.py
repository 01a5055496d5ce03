"""Image input through serving: the engine splices image embeddings in at prefill, the API
takes `image_url` data: URLs, `glassgpt chat --image` works on a local checkpoint.

One tiny vision checkpoint is trained in-process (a few steps: the point is the mechanics,
not accuracy), served on 127.0.0.1 beside a text-only copy of the same language model,
and checked against the in-process model: `vision.ask` (greedy generate with the same
image embeddings) for the answers, `GPT.forward(image_embeds=...)` for the log-probabilities.
"""

import base64
import concurrent.futures as cf
import io
import math
import struct
import zlib

import httpx
import openai
import pytest
import torch
import torch.nn.functional as F

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

from glassgpt import config  # noqa: E402
from glassgpt.data import images as I  # noqa: E402
from glassgpt.model import vision as V  # noqa: E402
from glassgpt.serve.api import create_app  # noqa: E402
from glassgpt.serve.chat import LocalBackend, run_chat  # noqa: E402
from glassgpt.serve.engine import Engine, SamplingParams  # noqa: E402
from glassgpt.serve.errors import ServeError  # noqa: E402
from glassgpt.serve.testing import ServerThread  # noqa: E402
from glassgpt.train.checkpoint import load_model  # noqa: E402
from glassgpt.train.trainer import train  # noqa: E402

from conftest import naive_greedy, tiny_overrides  # noqa: E402

VIS, TEXT = "vis", "text"
# 32×32 images, 8×8 patches, pixel shuffle 2: 4 image tokens per image; a 64-token context.
VISION = dict(vision__enabled="true", vision__image_size=32, vision__patch_size=8, vision__width=32, vision__depth=1,
              vision__head_dim=16, vision__shuffle=2, vision__batch_size=4, vision__eval_samples=4,
              vision__mix="digits:1,shapes:1", model__seq_len=64, train__tokens=4 * 64 * 4,
              train__eval_every=100, train__checkpoint_every=100)


@torch.no_grad()
def _greedy(model, tok, images, question, max_new_tokens=16, system=None):
    """The reference answer: greedy by definition (full-prefix argmax), without the engine."""
    msgs = [{"role": "system", "content": system}] if system else []
    ids = tok.render_chat(msgs + [{"role": "user", "content": [{"type": "image"} for _ in images] + [{"type": "text", "text": question}]}],
                          True, V.n_image_tokens(model))
    V.check_fits(model, len(ids))
    out = naive_greedy(model, ids, max_new_tokens, image_embeds=V.encode_images(model, images))
    end = tok.special["<|assistant_end|>"]
    return tok.decode(out[: out.index(end)] if end in out else out).strip()


@pytest.fixture(scope="module")
def vis(tmp_path_factory, corpus_dir, cache_dir):
    run = tmp_path_factory.mktemp("serve-vision") / "run"
    train(config.load(None, tiny_overrides(corpus_dir, cache_dir, **VISION)), run)
    model, tok, _ = load_model(run, device="cpu")
    text_model, _, _ = load_model(run, device="cpu")
    del text_model.vision  # the same language model without its encoder: a text-only model
    engines = [Engine(model, tok, name=VIS, device="cpu", max_batch=6),
               Engine(text_model, tok, name=TEXT, device="cpu", max_batch=2)]
    with ServerThread(create_app(engines, None, auth=False)) as srv:
        yield {"run": run, "model": model, "tok": tok, "engine": engines[0], "url": srv.url,
               "client": openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0, timeout=120)}


# --- images ----------------------------------------------------------------------------------------
def encode(im, fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def url(data: bytes, mime="image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def digit(i: int):
    return I.digits(0, "heldout", i)


def png_with_size(w: int, h: int) -> bytes:
    """A well-formed PNG whose header claims w×h (its pixel data is a few bytes)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def msg(*images, text="Which digit is this?"):
    parts = [{"type": "image_url", "image_url": {"url": u}} for u in images]
    return [{"role": "user", "content": parts + [{"type": "text", "text": text}]}]


def expected_logprobs(vis, images, question, k=5):
    """Top-k log-probabilities of the first answer token, in-process (GPT.forward with image_embeds)."""
    model, tok = vis["model"], vis["tok"]
    parts = [{"type": "image"} for _ in images] + [{"type": "text", "text": question}]
    ids = tok.render_chat([{"role": "user", "content": parts}], True, V.n_image_tokens(model))
    with torch.no_grad():
        logits = model(torch.tensor([ids]), image_embeds=V.encode_images(model, images))[0, -1]
    vals, idx = torch.topk(F.log_softmax(logits.float(), -1), k)
    return len(ids), idx.tolist(), vals.tolist()


def served_logprobs(vis, images_urls, question, k=5):
    r = vis["client"].chat.completions.create(model=VIS, messages=msg(*images_urls, text=question), max_tokens=1,
                                              temperature=0, logprobs=True, top_logprobs=k)
    first = r.choices[0].logprobs.content[0]
    return r.usage.prompt_tokens, first


# --- answers and log-probabilities -------------------------------------------------------------------
def test_image_chat_matches_ask(vis):
    client, model, tok = vis["client"], vis["model"], vis["tok"]
    for s in (digit(0), digit(1), I.shapes(0, "heldout", 0)):
        n_prompt = len(tok.render_chat([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": s.question}]}],
                                       True, 4))
        room = min(16, 64 - n_prompt)
        want = _greedy(model, tok, [s.image], s.question, max_new_tokens=room)
        r = client.chat.completions.create(model=VIS, messages=msg(url(encode(s.image)), text=s.question),
                                           max_tokens=room, temperature=0)
        assert r.choices[0].message.content.strip() == want
        assert r.usage.prompt_tokens == n_prompt  # the image's 4 positions are prompt tokens
        st = client.chat.completions.create(model=VIS, messages=msg(url(encode(s.image)), text=s.question),
                                            max_tokens=room, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
        text, usage = "", None
        for chunk in st:
            usage = chunk.usage or usage
            for c in chunk.choices:
                text += c.delta.content or ""
        assert text == r.choices[0].message.content and usage.prompt_tokens == n_prompt


def test_logprobs_equal_in_process_forward(vis):
    """The served first-token distribution is the model's own, with this image spliced in."""
    tok = vis["tok"]
    a, b = digit(2).image, I.shapes(0, "heldout", 3).image
    q = "Which digit is this?"
    for im in (a, b):
        n, idx, vals = expected_logprobs(vis, [im], q)
        got_n, first = served_logprobs(vis, [url(encode(im))], q)
        assert got_n == n
        assert [t.token for t in first.top_logprobs] == [tok.decode_bytes([i]).decode("utf-8", "replace") for i in idx]
        assert [t.logprob for t in first.top_logprobs] == pytest.approx(vals, abs=1e-4)
    # the image matters: two different images, two different distributions
    _, fa = served_logprobs(vis, [url(encode(a))], q)
    _, fb = served_logprobs(vis, [url(encode(b))], q)
    assert [t.logprob for t in fa.top_logprobs] != pytest.approx([t.logprob for t in fb.top_logprobs], abs=1e-4)
    # two images in one message, in order
    n, idx, vals = expected_logprobs(vis, [a, b], q)
    got_n, first = served_logprobs(vis, [url(encode(a)), url(encode(b))], q)
    assert got_n == n and [t.logprob for t in first.top_logprobs] == pytest.approx(vals, abs=1e-4)


def test_formats(vis):
    """PNG (RGB, RGBA, palette, greyscale), JPEG, WebP, GIF (animated: the first frame)."""
    q = "Which digit is this?"
    base = I.shapes(0, "heldout", 1).image.convert("RGB")
    other = I.shapes(0, "heldout", 2).image.convert("RGB")
    cases = [("image/png", encode(base)), ("image/png", encode(base.convert("RGBA"))),
             ("image/png", encode(base.convert("P"))), ("image/png", encode(base.convert("L"))),
             ("image/jpeg", encode(base, "JPEG", quality=90)),
             ("image/gif", encode(base, "GIF", save_all=True, append_images=[other], duration=100, loop=0))]
    from PIL import features

    if features.check("webp"):
        cases.append(("image/webp", encode(base, "WEBP", quality=90)))
    for mime, data in cases:
        im = I.load_image(data, animated="first")  # what the server decodes, checked against in-process
        n, _, vals = expected_logprobs(vis, [im], q)
        got_n, first = served_logprobs(vis, [url(data, mime)], q)
        assert got_n == n, mime
        assert [t.logprob for t in first.top_logprobs] == pytest.approx(vals, abs=1e-4), mime


def test_continuous_batching_with_images(vis):
    """Image and text requests running together give the answers each gives alone; n
    choices share one prefill (and its image)."""
    client = vis["client"]
    samples = [digit(i) for i in range(4)]
    alone = [_greedy(vis["model"], vis["tok"], [s.image], s.question, max_new_tokens=12) for s in samples]

    def one(i):
        if i % 2:
            r = client.chat.completions.create(model=VIS, messages=[{"role": "user", "content": "hello"}],
                                               max_tokens=12, temperature=0)
            return None, r.choices[0].message.content
        s = samples[i // 2]
        r = client.chat.completions.create(model=VIS, messages=msg(url(encode(s.image)), text=s.question),
                                           max_tokens=12, temperature=0, n=2)
        return i // 2, [c.message.content.strip() for c in r.choices]

    with cf.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    for k, got in results:
        if k is not None:
            assert got == [alone[k], alone[k]]
    texts = {g for k, g in results if k is None}
    assert len(texts) == 1  # the same text prompt, greedy: the same answer whatever ran beside it


# --- errors ------------------------------------------------------------------------------------------
def bad_images():
    good = encode(digit(0).image)
    idat = good.index(b"IDAT")
    corrupt = good[: idat + 8] + bytes(b ^ 0x5A for b in good[idat + 8 : idat + 40]) + good[idat + 40 :]
    cmyk = encode(Image.new("CMYK", (16, 16), (0, 255, 0, 0)), "JPEG")
    deep = encode(Image.new("I;16", (16, 16), 40000))
    return {
        "corrupt": url(corrupt),
        "truncated": url(good[: len(good) // 2]),
        "truncated base64": url(good)[:-7],
        "zero-size": "data:image/png;base64,",
        "1x1": url(encode(Image.new("RGB", (1, 1)))),
        "20000x20000": url(png_with_size(20_000, 20_000)),
        "non-image renamed": url(b"PK\x03\x04 a zip file renamed cat.png" + b"\0" * 64),
        "text": url(b"just some text, not an image"),
        "cmyk": url(cmyk, "image/jpeg"),
        "16-bit": url(deep),
        "bmp": url(encode(Image.new("RGB", (16, 16)), "BMP"), "image/bmp"),
        "remote": "https://example.com/cat.png",
    }


def test_bad_images_are_400s(vis):
    for name, u in bad_images().items():
        r = httpx.post(vis["url"] + "/v1/chat/completions", json={"model": VIS, "messages": msg(u)}, timeout=60)
        assert r.status_code == 400, (name, r.status_code, r.text)
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error", name
        assert err["param"].startswith("messages[0].content[0]"), name
        assert "Traceback" not in err["message"] and len(err["message"]) < 300, name
    with pytest.raises(openai.BadRequestError) as e:
        vis["client"].chat.completions.create(model=VIS, messages=msg(bad_images()["1x1"]))
    assert "1×1" in e.value.message and e.value.code == "invalid_image_format"
    with pytest.raises(openai.BadRequestError) as e:
        vis["client"].chat.completions.create(model=VIS, messages=msg(bad_images()["cmyk"]))
    assert "CMYK" in e.value.message
    # the server is fine afterwards
    r = vis["client"].chat.completions.create(model=VIS, messages=msg(url(encode(digit(0).image))), max_tokens=2)
    assert r.choices[0].finish_reason in ("stop", "length")


def test_mutated_images_never_500(vis):
    """Random byte damage inside otherwise well-framed PNG, JPEG, GIF and WebP files: each is
    a 200 (a decoder that tolerates the damage) or a 400, never a 500; the engine lives on."""
    import random

    rng = random.Random(0)
    im = I.shapes(0, "heldout", 5).image.convert("RGB")
    from PIL import features

    originals = [("image/png", encode(im)), ("image/jpeg", encode(im, "JPEG")), ("image/gif", encode(im, "GIF"))]
    if features.check("webp"):
        originals.append(("image/webp", encode(im, "WEBP")))
    seen = set()
    for k in range(24):
        mime, data = originals[k % len(originals)]
        b = bytearray(data)
        for _ in range(rng.randint(1, 8)):  # keep the signature and the last bytes (the trailer)
            b[rng.randrange(8, len(b) - 12)] = rng.randrange(256)
        r = httpx.post(vis["url"] + "/v1/chat/completions", timeout=60,
                       json={"model": VIS, "messages": msg(url(bytes(b), mime)), "max_tokens": 1})
        assert r.status_code in (200, 400), (mime, r.status_code, r.text)
        seen.add(r.status_code)
    assert vis["engine"].alive and 400 in seen


def test_too_many_images(vis):
    client, u = vis["client"], url(encode(digit(0).image))
    with pytest.raises(openai.BadRequestError) as e:  # 16 images × 4 tokens fill the 64-token context
        client.chat.completions.create(model=VIS, messages=msg(*[u] * 16))
    assert e.value.code == "context_length_exceeded" and "image" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:  # they fit, the completion does not
        client.chat.completions.create(model=VIS, messages=msg(*[u] * 8), max_tokens=40)
    assert e.value.code == "context_length_exceeded"
    r = client.chat.completions.create(model=VIS, messages=msg(*[u] * 8), max_tokens=4)
    assert r.usage.prompt_tokens > 32


def test_text_only_model_says_so(vis):
    u = url(encode(digit(0).image))
    with pytest.raises(openai.BadRequestError) as e:
        vis["client"].chat.completions.create(model=TEXT, messages=msg(u))
    assert "no image input" in e.value.message and e.value.code == "image_input_not_supported"
    cards = {m.id: m for m in vis["client"].models.list().data}
    assert cards[VIS].vision is True and cards[TEXT].vision is False
    r = vis["client"].chat.completions.create(model=TEXT, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert r.choices[0].message.role == "assistant"


def test_engine_checks_image_positions(vis):
    eng, tok = vis["engine"], vis["tok"]
    s = digit(0)
    ids = tok.render_chat([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": s.question}]}],
                          True, eng.image_tokens)
    with pytest.raises(ServeError, match="image"):
        eng.submit(ids, SamplingParams(max_tokens=2), lambda ev: None, images=[s.image, s.image])
    text_ids = tok.render_chat([{"role": "user", "content": s.question}])
    with pytest.raises(ServeError, match="image"):
        eng.submit(text_ids, SamplingParams(max_tokens=2), lambda ev: None, images=[s.image])
    # ready-made embeddings work as images do
    emb = V.encode_images(vis["model"], [s.image])
    a = eng.generate(ids, SamplingParams(max_tokens=8, temperature=0), images=emb, timeout=120)
    b = eng.generate(ids, SamplingParams(max_tokens=8, temperature=0), images=[s.image], timeout=120)
    assert a["choices"][0]["text"] == b["choices"][0]["text"]
    # an image the encoder refuses at prefill is an error event, not a dead engine, and no slot leaks
    free = len(eng.free_slots)
    with pytest.raises(ServeError, match="1×1"):
        eng.generate(ids, SamplingParams(max_tokens=2), images=[Image.new("RGB", (1, 1))], timeout=120)
    assert len(eng.free_slots) == free and eng.alive


# --- terminal chat -----------------------------------------------------------------------------------
def reader(lines):
    it = iter(lines)

    def read(prompt=""):
        try:
            return next(it)
        except StopIteration:
            raise EOFError from None

    return read


def test_chat_image_local(vis, tmp_path, monkeypatch, capsys):
    s = digit(3)
    path = tmp_path / "digit.png"
    s.image.save(path)
    want = _greedy(vis["model"], vis["tok"], [s.image], s.question, max_new_tokens=16)

    # the loop, with a local engine
    out = io.StringIO()
    backend = LocalBackend(Engine(vis["model"], vis["tok"], name="local", device="cpu", max_batch=1))
    conv = run_chat(backend, read=reader([s.question]), out=out, temperature=0, max_tokens=16, images=[str(path)])
    assert conv[0]["content"][0]["type"] == "image_url" and conv[1]["content"].strip() == want
    assert f"local> {conv[1]['content']}" in out.getvalue()
    backend.engine.stop()

    # the CLI: glassgpt chat --checkpoint RUN --image PATH
    from glassgpt.cli import main

    monkeypatch.setattr("sys.stdin", io.StringIO(s.question + "\n/quit\n"))
    assert main(["chat", "--checkpoint", str(vis["run"]), "--image", str(path), "--temperature", "0",
                 "--max-tokens", "16", "--device", "cpu"]) == 0
    assert want in capsys.readouterr().out
    bad = tmp_path / "notes.png"
    bad.write_text("not an image, renamed")
    assert main(["chat", "--checkpoint", str(vis["run"]), "--image", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "notes.png" in err and "Traceback" not in err


def test_chat_image_text_only_model(vis, tmp_path):
    path = tmp_path / "digit.png"
    digit(0).image.save(path)
    text_model, tok, _ = load_model(vis["run"], device="cpu")
    del text_model.vision
    out = io.StringIO()
    backend = LocalBackend(Engine(text_model, tok, name="t", device="cpu", max_batch=1))
    conv = run_chat(backend, read=reader(["/image " + str(path), "what is this?"]), out=out, temperature=0,
                    images=[str(path)])
    backend.engine.stop()
    assert "no image input" in out.getvalue() and conv == []


# --- the web page ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_web_page_sends_images(vis, tmp_path):
    """Headless Chromium: the attach button is enabled for the vision model, the image goes
    out as an image_url part, and the answer is the model's."""
    import os
    import shutil

    chromium = os.environ.get("GLASSGPT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(chromium):
        pytest.skip("no system Chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    s = digit(4)
    path = tmp_path / "digit.png"
    s.image.save(path)
    # The page sends a system prompt (the default one when the field is empty: too long for this
    # model's 64 positions with an image and a question), so the test types a short one.
    system = "Be brief."
    want = _greedy(vis["model"], vis["tok"], [s.image], s.question, max_new_tokens=64, system=system)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(vis["url"] + "/")
        page.wait_for_function("document.querySelector('#model').options.length > 1")
        page.select_option("#model", TEXT)
        assert page.is_disabled("#attach")
        page.select_option("#model", VIS)
        assert not page.is_disabled("#attach")
        page.fill("#temperature", "0")
        page.dispatch_event("#temperature", "input")
        page.click("#system-box summary")
        page.fill("#system", system)
        page.set_input_files("#file", str(path))
        page.wait_for_selector("#attachments img")
        sent = []
        page.on("request", lambda r: sent.append(r.post_data_json) if r.url.endswith("/chat/completions") else None)
        page.fill("#input", s.question)
        page.press("#input", "Enter")
        page.wait_for_selector(".msg.assistant:not(.streaming)", timeout=60_000)
        answer = page.text_content(".msg.assistant .text")
        browser.close()
    assert sent[0]["messages"][0] == {"role": "system", "content": system}
    parts = sent[0]["messages"][-1]["content"]
    assert [p["type"] for p in parts] == ["image_url", "text"] and parts[0]["image_url"]["url"].startswith("data:image/png")
    assert answer.strip() == want
