"""The OpenAI-compatible HTTP API (FastAPI), the web chat page, keys, metering, metrics.

Routes: POST /v1/chat/completions, POST /v1/completions (legacy, with echo + logprobs),
GET /v1/models[/{id}], GET /health, GET /metrics (Prometheus text), GET / (the chat page).
Every error has the official shape {"error": {"message", "type", "param", "code"}};
an error after a stream began is sent as one `data: {"error": ...}` event, then the
stream closes. Each request is metered (tokens and cost) in the SQLite ledger, including
requests cancelled by a client that went away (the tokens generated up to then).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import ipaddress
import json
import logging
import re
import time
import uuid
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from glassgpt.serve.engine import Engine, SamplingParams, token_bytes, token_text
from glassgpt.serve.errors import ContextLengthError, ServeError
from glassgpt.serve.metrics import Metrics
from glassgpt.serve.schema import ChatCompletionRequest, CompletionRequest
from glassgpt.serve.store import DEFAULT_PRICE, KNOWN_PRICES, Store

log = logging.getLogger(__name__)

MAX_BODY = 32 * 1024 * 1024  # bytes; a bigger body is a 413
MAX_IMAGE = 16 * 1024 * 1024  # decoded bytes of one image
MAX_REQUEST_PIXELS = 4096 * 4096  # all images of one request, from their headers, before decoding
_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^;,]*)*?);base64,(?P<data>.*)$", re.S)
_IMAGE_MAGIC = {
    "png": (b"\x89PNG\r\n\x1a\n",),
    "jpeg": (b"\xff\xd8\xff",),
    "gif": (b"GIF87a", b"GIF89a"),
    "webp": (b"RIFF",),
}


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


_TYPE_TAG = re.compile(r"^(str|int|float|bool|none|list|dict|[A-Z]\w*|.*[\[\](-].*)$")


def param_path(loc) -> str | None:
    """pydantic's error location → OpenAI's param: ('body', 'messages', 0, 'content', 'str')
    → 'messages[0].content'. The names of union branches (str, list[ContentPart], ...) that
    pydantic puts in the location are not parameters and are left out."""
    out = ""
    for x in loc:
        if x == "body" and not out:
            continue
        if isinstance(x, int):
            out += f"[{x}]"
        elif _TYPE_TAG.match(str(x)):
            continue
        else:
            out += ("." if out else "") + str(x)
    return out or None


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# --- images -------------------------------------------------------------------------------
def decode_image(url: str, param: str, max_bytes: int = MAX_IMAGE) -> tuple[str, bytes]:
    """A `data:image/...;base64,` URL → (format, bytes); 400 for anything that is not a
    whole image, 413 for one too large. Other URLs are refused: the server fetches nothing."""
    if not url.startswith("data:"):
        raise ServeError("Only base64 `data:` image URLs are accepted; this server does not fetch remote images.",
                         param=param, code="invalid_image_url")
    m = _DATA_URL.match(url)
    if not m:
        raise ServeError("Invalid image data URL: expected data:image/<format>;base64,<data>.", param=param,
                         code="invalid_image_url")
    data = re.sub(r"\s+", "", m.group("data"))
    if len(data) * 3 // 4 > max_bytes:
        raise ServeError(f"Image too large: {len(data) * 3 // 4:,} bytes; the limit is {max_bytes:,}.", param=param,
                         code="image_too_large", status=413)
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ServeError("Invalid image: the base64 data is malformed or truncated.", param=param,
                         code="invalid_image_format") from None
    fmt = next((f for f, magics in _IMAGE_MAGIC.items() if any(raw.startswith(mg) for mg in magics)), None)
    if fmt == "webp" and raw[8:12] != b"WEBP":
        fmt = None
    if fmt is None:
        raise ServeError("Invalid image: the data is not a PNG, JPEG, GIF or WebP image.", param=param,
                         code="invalid_image_format")
    complete = {"png": raw.rstrip(b"\x00").endswith(b"IEND\xaeB`\x82"), "jpeg": raw.rstrip(b"\x00").endswith(b"\xff\xd9"),
                "gif": raw.rstrip(b"\x00").endswith(b"\x3b"), "webp": len(raw) >= 8 and int.from_bytes(raw[4:8], "little") + 8 <= len(raw)}
    if not complete[fmt]:
        raise ServeError(f"Invalid image: the {fmt.upper()} data is truncated.", param=param, code="invalid_image_format")
    return fmt, raw


def load_images(images: list[tuple[str, bytes]], max_pixels: int = MAX_REQUEST_PIXELS, side: int = 0) -> list:
    """[(param, bytes)] from decode_image → RGB PIL images, validated by the image loader
    (animated GIF/WebP: the first frame). Any bad image is a 400 that names its content
    part; never a 500.

    Decompression amplification: a few KB of PNG can declare 6000×6000 pixels. The sizes
    are read from the headers first and the whole request's pixels must fit `max_pixels`
    before anything is decoded; a JPEG is decoded at a reduced scale (`draft`) when the
    encoder only needs `side` pixels, and a decoded image much larger than `side` is
    shrunk (`reduce`) at once so it is not kept at full size while it waits."""
    from PIL import Image

    from glassgpt.data.images import ImageError, load_image

    opened, budget = [], max_pixels
    for param, raw in images:
        try:
            im = Image.open(io.BytesIO(raw))  # reads the header only
            if side and im.format == "JPEG":
                im.draft("RGB", (side, side))  # DCT scaling: 1/2, 1/4 or 1/8 of the pixels, decoded
            w, h = im.size
        except Exception as e:
            raise ServeError(f"Invalid image: {param}: the image header could not be read ({type(e).__name__}).",
                             param=param, code="invalid_image_format") from None
        budget -= w * h
        if budget < 0:
            raise ServeError(f"Images too large: {param} is {w}×{h} and this request's images may hold "
                             f"{max_pixels:,} pixels in all; downscale them or send fewer.", param=param,
                             code="image_too_large")
        opened.append((param, im))
    out = []
    for param, im in opened:
        try:
            im = load_image(im, name=param, animated="first")
        except ImageError as e:
            raise ServeError(f"Invalid image: {e}.", param=param, code="invalid_image_format") from None
        except Exception as e:  # a decoder bug in Pillow on hostile data is still the image's fault
            log.warning("image decoder failed on %s: %r", param, e)
            raise ServeError(f"Invalid image: {param}: the image could not be decoded ({type(e).__name__}).",
                             param=param, code="invalid_image_format") from None
        k = min(im.size) // (2 * side) if side else 0
        if k >= 2:
            im = im.reduce(k)  # still at least 2×side on the short side: the encoder resizes from there
        out.append(im)
    return out


# --- request → prompt ---------------------------------------------------------------------
def chat_messages(body: ChatCompletionRequest, engine: Engine, images: list | None = None) -> list[dict]:
    """Validate roles and content parts; returns messages for Tokenizer.render_chat.
    images: a list that receives (param, bytes) for every image part, in prompt order."""
    if not body.messages:
        raise ServeError("'messages' must contain at least one message.", param="messages", code="empty_array")
    out = []
    for i, m in enumerate(body.messages):
        role = "system" if m.role == "developer" else m.role
        if role not in ("system", "user", "assistant"):
            raise ServeError(f"Invalid role '{m.role}' in messages[{i}]: this server supports system, developer, "
                             "user and assistant messages (no tools).", param=f"messages[{i}].role", code="invalid_value")
        # Any order is accepted, as OpenAI accepts it: system messages anywhere (openai/evals
        # sends few-shot examples as system turns), an assistant turn first, and two turns of
        # the same role in a row (LangChain sends them), which are merged into one turn below
        # so that the model sees alternating turns as in training.
        c = m.content
        if c is None:
            raise ServeError(f"messages[{i}].content is required.", param=f"messages[{i}].content", code="invalid_value")
        parts = []
        if isinstance(c, str):
            parts = [{"type": "text", "text": clean(c)}]
        else:
            for j, p in enumerate(c):
                param = f"messages[{i}].content[{j}]"
                if p.type == "text":
                    if p.text is None:
                        raise ServeError(f"{param}: a text part needs 'text'.", param=param, code="invalid_value")
                    parts.append({"type": "text", "text": clean(p.text)})
                elif p.type == "image_url":
                    if role != "user":
                        raise ServeError(f"{param}: images are only allowed in user messages.", param=param)
                    if p.image_url is None:
                        raise ServeError(f"{param}: an image_url part needs 'image_url': {{'url': ...}}.", param=param)
                    _, raw = decode_image(p.image_url.url, param + ".image_url.url", engine.max_image)
                    if not engine.has_vision:
                        raise ServeError(f"The model `{engine.name}` has no image input (no vision encoder); "
                                         "send text only.", param=param, code="image_input_not_supported")
                    if images is not None:
                        images.append((param, raw))
                    parts.append({"type": "image"})
                else:
                    raise ServeError(f"{param}: unsupported content part type '{p.type}' (use 'text' or 'image_url').",
                                     param=param + ".type", code="invalid_value")
        if out and role != "system" and out[-1]["role"] == role:
            merged = out[-1]["content"] + [{"type": "text", "text": "\n\n"}] + parts
            out[-1]["content"] = []
            for p in merged:  # adjacent texts become one, tokenized as the joined text would be
                if p["type"] == "text" and out[-1]["content"] and out[-1]["content"][-1]["type"] == "text":
                    out[-1]["content"][-1] = {"type": "text", "text": out[-1]["content"][-1]["text"] + p["text"]}
                else:
                    out[-1]["content"].append(p)
        else:
            out.append({"role": role, "content": parts})
    return out


def clean(text: str) -> str:
    """JSON may carry lone surrogates (\\ud800), which are not UTF-8: replace them."""
    return text.encode("utf-8", "replace").decode("utf-8")


def stop_list(stop) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else list(stop)
    if len(stops) > 4:
        raise ServeError("'stop' takes at most 4 sequences.", param="stop", code="invalid_value")
    return [clean(s) for s in stops if s]


# --- response pieces ------------------------------------------------------------------------
def chat_logprobs(tok, infos) -> dict:
    def one(tid, lp):
        return {"token": token_text(tok, tid), "logprob": lp, "bytes": token_bytes(tok, tid)}

    return {"content": [{**one(t.id, t.logprob), "top_logprobs": [one(i, lp) for i, lp in t.top]} for t in infos],
            "refusal": None}


def legacy_logprobs(tok, infos, text_start: int = 0) -> dict:
    tokens, lps, tops, offs = [], [], [], []
    off = text_start
    for t in infos:
        s = token_text(tok, t.id)
        tokens.append(s)
        lps.append(t.logprob)
        tops.append({token_text(tok, i): lp for i, lp in t.top} if t.top or t.logprob is not None else None)
        offs.append(off)
        off += len(s)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offs}


def sse(obj) -> str:
    return "data: " + json.dumps(obj, separators=(",", ":")) + "\n\n"


class Server:
    """State shared by the routes: engines by model id, the store, prices, metrics."""

    def __init__(self, engines: list[Engine], store: Store | None, auth: bool = True,
                 prices: dict[str, tuple[float, float]] | None = None, max_body: int = MAX_BODY,
                 max_image: int = MAX_IMAGE, max_pixels: int = MAX_REQUEST_PIXELS):
        if not engines:
            raise ServeError("no model to serve: pass --checkpoint DIR")
        self.engines = {e.name: e for e in engines}
        if len(self.engines) != len(engines):
            raise ServeError("two models have the same name; give each --checkpoint a distinct --model-name")
        for e in engines:
            e.max_image = max_image
        if auth and store is None:
            raise ServeError("API keys need a database (--db); or pass --no-auth for local use")
        self.store = store
        self.auth = auth
        self.prices = prices or {}
        self.max_body = max_body
        self.max_pixels = max_pixels
        self.metrics = Metrics()
        self.started = int(time.time())
        self.live: set[Meter] = set()  # meters of requests still running
        self.meter_interval = 1.0  # seconds between writes of running requests' tokens

    def price(self, model: str) -> tuple[float, float]:
        return self.prices.get(model) or KNOWN_PRICES.get(model) or self.prices.get("*") or DEFAULT_PRICE

    def engine(self, model: str) -> Engine:
        e = self.engines.get(model)
        if e is None:
            raise ServeError(f"The model `{model}` does not exist or you do not have access to it. "
                             f"Models here: {', '.join(self.engines)}.", param="model", code="model_not_found", status=404)
        return e

    def authenticate(self, request):
        if not self.auth:
            return None
        return self.store.authenticate(request.headers.get("authorization"))

    def open_meter(self, key, model: str, endpoint: str, prompt_tokens: int, reqs: list) -> "Meter":
        """The ledger row of a request that reached the engine; updated by `flush_meters`."""
        m = Meter(key, model, endpoint, prompt_tokens, reqs, self.price(model))
        if self.store is not None:
            m.row = self.store.open_usage(key.id if key else None, model, endpoint, prompt_tokens, m.price)
            self.live.add(m)
        return m

    def close_meter(self, m: "Meter", status: str) -> None:
        """The one final write of a request's row (the status guard makes a second call a no-op)."""
        if m.status is not None:
            return
        m.status = status
        self.live.discard(m)
        ct = m.completion_tokens()
        self.metrics.tokens(m.model, m.prompt_tokens, ct)
        if self.store is not None:
            self.store.update_usage([(m.row, ct, m.cost(ct), status)])

    def flush_meters(self) -> None:
        """Write the tokens produced so far by every running request (one transaction)."""
        rows = []
        for m in list(self.live):
            ct = m.completion_tokens()
            if ct != m.written and m.status is None:
                rows.append((m.row, ct, m.cost(ct), None))
                m.written = ct
        if rows and self.store is not None:
            self.store.update_usage(rows)


class Meter:
    def __init__(self, key, model, endpoint, prompt_tokens, reqs, price):
        self.key, self.model, self.endpoint, self.prompt_tokens = key, model, endpoint, prompt_tokens
        self.reqs, self.price = reqs, price
        self.row, self.written, self.status = None, 0, None

    def completion_tokens(self) -> int:
        return sum(r.completion_tokens for r in self.reqs)

    def cost(self, ct: int) -> float:
        return self.prompt_tokens / 1000 * self.price[0] + ct / 1000 * self.price[1]


def error_headers(e: ServeError) -> dict | None:
    if e.status in (429, 503):
        return {"retry-after": str(getattr(e, "retry_after", 1))}
    return None


async def send_json(send, status: int, body: dict, headers: dict | None = None) -> None:
    payload = json.dumps(body).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    hdrs += [(k.encode(), str(v).encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": payload})


async def drain(receive, cap: int) -> None:
    """Discard a request body, at most `cap` bytes of it."""
    seen, more = 0, True
    while more and seen <= cap:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return
        seen += len(msg.get("body", b""))
        more = msg.get("more_body", False)


def route_label(app, scope) -> str:
    """The route template a request matches ('/v1/models/{model_id}'), never the raw path:
    a metrics label must come from a small fixed set, whatever paths clients send."""
    for r in app.router.routes:
        try:
            m, _ = r.matches(scope)
        except Exception:
            continue
        if m == Match.FULL:
            return getattr(r, "path", "unmatched")
    return "unmatched"


# Headers on every response. The page loads its scripts and styles from files ('self',
# vendored libraries under /web/vendor/ included), never inline, so the policy can forbid
# inline script; it may not be framed (clickjacking).
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
                                 b"connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
                                 b"form-action 'self'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


def _split_host(value: str) -> tuple[str, int | None]:
    """'127.0.0.1:8000' / '[::1]:8000' / 'localhost' → (host, port or None)."""
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = value.partition(":")
    try:
        return host.lower(), int(port) if port else None
    except ValueError:
        return host.lower(), -1


class Gate:
    """ASGI middleware that runs the checks that cost nothing before the body is read.

    With keys: the API key, then whether the key is already over its rate limit. A client
    without a valid key, or one over its limit, is refused before its (possibly 10 MB)
    body is read, parsed or tokenized.

    Without keys (--no-auth, loopback only) any web page the user visits could drive the
    server from the browser, so: the Host must name the loopback address the server is
    bound to (DNS rebinding sends another name), an Origin header must be that same origin
    (cross-site fetches send theirs), and a POST body must be declared application/json
    (the types a plain HTML form can send without a CORS preflight are refused)."""

    def __init__(self, app, server: "Server", bind_port: int | None = None):
        self.app, self.srv, self.bind_port = app, server, bind_port

    def _local_check(self, scope, headers: dict) -> ServeError | None:
        host, port = _split_host(headers.get("host", ""))
        if not is_loopback(host) or (self.bind_port is not None and port not in (None, self.bind_port)):
            return ServeError("This server runs without API keys and only answers requests addressed to its "
                              "loopback address (Host: localhost or 127.0.0.1).", code="invalid_host", status=403)
        origin = headers.get("origin")
        if origin is not None:
            scheme, _, rest = origin.partition("://")
            ohost, oport = _split_host(rest)
            if scheme not in ("http", "https") or not is_loopback(ohost) or oport != port:
                return ServeError("Cross-origin requests are refused by a server without API keys.",
                                  code="cross_origin_refused", status=403)
        if scope["method"] == "POST":
            ctype = headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype != "application/json":
                return ServeError("The request body must be sent as Content-Type: application/json.",
                                  code="unsupported_media_type", status=415)
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_secure(msg):
            if msg["type"] == "http.response.start":
                extra = SECURITY_HEADERS
                key = scope.get("state", {}).get("api_key")
                if key is not None and self.srv.store is not None:
                    extra = extra + [(k.encode(), v.encode()) for k, v in self.srv.store.rate_headers(key).items()]
                msg = {**msg, "headers": list(msg.get("headers") or []) + extra}
            await send(msg)

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
        try:
            if not self.srv.auth:
                e = self._local_check(scope, headers)
                if e is not None:
                    raise e
            elif scope["path"].startswith("/v1/"):
                key = self.srv.store.authenticate(headers.get("authorization"))
                scope.setdefault("state", {})["api_key"] = key  # for the x-ratelimit-* headers, 429 included
                if scope["method"] == "POST":
                    self.srv.store.precheck_rate(key)
        except ServeError as e:
            self.srv.metrics.request(route_label(scope["app"], scope) if "app" in scope else "unmatched", e.status)
            # Read and drop the body (up to the body limit, never kept) so that the client gets
            # to read the refusal instead of a reset connection in the middle of its upload.
            await drain(receive, self.srv.max_body)
            return await send_json(send_secure, e.status, error_body(str(e), e.type, e.param, e.code),
                                   {**(error_headers(e) or {}), "connection": "close"})
        return await self.app(scope, receive, send_secure)


class BodyLimit:
    """ASGI middleware: a body over the limit (by Content-Length or as it streams) is a 413,
    and a body that does not arrive within `timeout` seconds is a 408.

    A declared Content-Length over the limit is refused at once: at most `limit` bytes more
    are read (and dropped, so that an ordinary client reads the 413 instead of a reset) and
    the connection is closed, so `Content-Length: 10**12` cannot keep a connection busy.
    uvicorn has no timeout for a body that stops halfway; this is it."""

    def __init__(self, app, limit: int, timeout: float = 30.0):
        self.app, self.limit, self.timeout = app, limit, timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        hdrs = scope.get("headers") or []
        ctype = dict(hdrs).get(b"content-type", b"")
        if scope["path"].startswith("/v1/") and b"json" not in ctype:
            # The official API reads the body as JSON whatever the content type (curl -d sends a form type).
            # (Without keys, Gate has already refused non-JSON bodies.)
            scope = {**scope, "headers": [(k, v) for k, v in hdrs if k != b"content-type"] + [(b"content-type", b"application/json")]}
        declared = dict(scope.get("headers") or []).get(b"content-length")
        too_big = False
        try:
            too_big = declared is not None and int(declared) > self.limit
        except ValueError:
            pass
        deadline = time.monotonic() + self.timeout

        async def next_message():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            return await asyncio.wait_for(receive(), left)

        if not too_big:
            chunks, size, more = [], 0, True
            try:
                while more:
                    msg = await next_message()
                    if msg["type"] == "http.disconnect":
                        return
                    chunk = msg.get("body", b"")
                    size += len(chunk)
                    more = msg.get("more_body", False)
                    if size > self.limit:
                        too_big = True
                        break
                    chunks.append(chunk)
            except TimeoutError:
                return await send_json(send, 408, error_body(
                    f"The request body did not arrive within {self.timeout:g} seconds.", code="request_timeout"),
                    {"connection": "close"})
            if not too_big:
                body, sent = b"".join(chunks), False

                async def replay():
                    nonlocal sent
                    if not sent:
                        sent = True
                        return {"type": "http.request", "body": body, "more_body": False}
                    return await receive()

                return await self.app(scope, replay, send)
        # Read and drop up to `limit` more bytes within the time left, then answer and close.
        drained, more = 0, True
        try:
            while more and drained <= self.limit:
                msg = await next_message()
                if msg["type"] == "http.disconnect":
                    break
                drained += len(msg.get("body", b""))
                more = msg.get("more_body", False)
        except TimeoutError:
            pass
        await send_json(send, 413, error_body(f"Request body too large: the limit is {self.limit:,} bytes.",
                                              code="request_too_large"), {"connection": "close"})


def create_app(engines: list[Engine], store: Store | None = None, auth: bool = True, prices=None,
               max_body: int = MAX_BODY, max_image: int = MAX_IMAGE, max_pixels: int = MAX_REQUEST_PIXELS,
               bind_port: int | None = None, read_timeout: float = 30.0):
    """bind_port: the port the server listens on; without keys, requests must name it in Host.
    read_timeout: seconds a client has to send its whole request body."""
    srv = Server(engines, store, auth, prices, max_body, max_image, max_pixels)

    @asynccontextmanager
    async def lifespan(app):
        for e in srv.engines.values():
            e.start()

        async def flusher():
            while True:
                await asyncio.sleep(srv.meter_interval)
                try:
                    await run_in_threadpool(srv.flush_meters)
                except Exception:  # a locked or full disk must not stop the server; the next try may work
                    log.exception("writing running requests' usage failed")

        task = asyncio.create_task(flusher())
        yield
        task.cancel()
        for e in srv.engines.values():
            e.stop()

    app = FastAPI(title="glassgpt", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible API for glassgpt models.")
    app.state.server = srv

    def err(e: ServeError) -> JSONResponse:
        return JSONResponse(error_body(str(e), e.type, e.param, e.code), status_code=e.status, headers=error_headers(e))

    @app.exception_handler(ServeError)
    async def _serve_error(request, e: ServeError):
        srv.metrics.request(route_label(app, request.scope), e.status)
        return err(e)

    @app.exception_handler(RequestValidationError)
    async def _validation(request, e: RequestValidationError):
        errs = e.errors()
        # Of a union's branches, the one that got furthest names the real problem
        # (content: [{"type": 3}] is about content[0].type, not "content is not a string").
        first = max(errs, key=lambda x: len(param_path(x.get("loc", ())) or "")) if errs else {}
        param = param_path(first.get("loc", ()))
        if first.get("type") == "json_invalid":
            # pydantic's loc here is a byte offset, not a parameter
            msg, code, param = ("We could not parse the JSON body of your request. The body must be valid JSON "
                                f"({first.get('ctx', {}).get('error', 'invalid JSON')}).", "invalid_json", None)
        elif first.get("type") == "missing" and param is None:
            msg, code = ("We could not parse the JSON body of your request: the body is empty. Send a JSON object "
                         "with Content-Type: application/json.", "invalid_json")
        elif first.get("type") == "missing":
            msg, code = f"Missing required parameter: '{param}'.", "missing_required_parameter"
        else:
            shown = str(first.get("input"))[:80]
            msg, code = f"Invalid value for '{param}': {first.get('msg', 'invalid')} (got {shown}).", "invalid_value"
            if param is None:
                msg = "The request body must be a JSON object."
        srv.metrics.request(route_label(app, request.scope), 400)
        return JSONResponse(error_body(msg, "invalid_request_error", param, code), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, e):
        if e.status_code == 404:
            msg = f"Unknown request URL: {request.method} {request.url.path}. Please check the URL for typos."
            body = error_body(msg, code="unknown_url")
        else:
            body = error_body(str(e.detail), code=None)
        srv.metrics.request(route_label(app, request.scope), e.status_code)
        return JSONResponse(body, status_code=e.status_code, headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def _internal(request, e):
        log.exception("internal error")
        srv.metrics.request(route_label(app, request.scope), 500)
        return JSONResponse(error_body(f"The server had an error processing your request: {type(e).__name__}.",
                                       "server_error"), status_code=500)

    async def require_key(request: Request):
        # Gate (the outer middleware) already checked the key before the body was read.
        if not srv.auth:
            return None
        key = request.scope.get("state", {}).get("api_key")
        return key if key is not None else srv.authenticate(request)

    # --- chat ---------------------------------------------------------------------------------
    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request, key=Depends(require_key)):
        t0 = time.time()
        engine = srv.engine(body.model)
        if body.top_logprobs and not body.logprobs:
            raise ServeError("'top_logprobs' requires 'logprobs' to be true.", param="top_logprobs", code="invalid_value")
        if not body.stream and body.stream_options is not None and body.stream_options.include_usage:
            raise ServeError("'stream_options' is only allowed when 'stream' is true.", param="stream_options")
        params = SamplingParams(
            max_tokens=body.max_completion_tokens or body.max_tokens,
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p, top_k=body.top_k or 0,
            stop=stop_list(body.stop), seed=body.seed, n=body.n or 1,
            logprobs=bool(body.logprobs), top_logprobs=body.top_logprobs or 0)
        # A size check that needs no tokenizer: a text of c characters is at least c/B tokens
        # when no token is longer than B bytes, so a message far over the context is refused
        # here, in microseconds, instead of after seconds of tokenizing.
        chars = sum(len(m.content) if isinstance(m.content, str) else
                    sum(len(p.text or "") for p in m.content) for m in body.messages if m.content)
        engine.check_size(chars, params, "messages")
        raw_images: list[tuple[str, bytes]] = []

        def prepare():
            # Validation, base64, tokenizing and the context check run in a worker thread: a
            # long prompt takes seconds there, while the event loop keeps serving /health.
            messages = chat_messages(body, engine, raw_images)
            # Each image part becomes engine.image_tokens <|image|> positions (billed as prompt tokens).
            prompt = engine.tokenizer.render_chat(messages, n_image_tokens=engine.image_tokens)
            try:
                want = engine.check(len(prompt), params, param="messages")
            except ContextLengthError as e:
                if not raw_images:
                    raise
                raise ContextLengthError(f"{e} Each image takes {engine.image_tokens} tokens; this request has "
                                         f"{len(raw_images)} image(s) ({len(raw_images) * engine.image_tokens} tokens): "
                                         "send fewer images.", param="messages") from None
            return prompt, want

        prompt, want = await run_in_threadpool(prepare)
        if srv.store is not None:
            srv.store.check_rate(key, len(prompt) + want * params.n)
        # Decode and validate the pixels off the event loop too (a large JPEG takes a while);
        # the engine thread encodes them once, at prefill.
        images = await run_in_threadpool(load_images, raw_images, srv.max_pixels, engine.image_side) \
            if raw_images else None
        rid = "chatcmpl-" + uuid.uuid4().hex[:24]
        created = int(time.time())
        req, events = await engine.stream(prompt, params, images=images, owner=key.id if key else None)
        meter = srv.open_meter(key, engine.name, "chat.completions", len(prompt), [req])

        def finish_meter(status: str):
            if meter.status is None:
                srv.metrics.latency(time.time() - t0, (req.first_token_at or time.time()) - t0)
                srv.close_meter(meter, status)

        base = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": engine.name,
                "system_fingerprint": engine.fingerprint}
        include_usage = bool(body.stream and body.stream_options and body.stream_options.include_usage)

        if body.stream:
            async def gen():
                status = "cancelled"
                try:
                    for i in range(params.n):
                        c = {**base, "choices": [{"index": i, "delta": {"role": "assistant", "content": "", "refusal": None},
                                                  "logprobs": None, "finish_reason": None}]}
                        if include_usage:
                            c["usage"] = None
                        yield sse(c)
                    async for ev in events:
                        if ev.kind == "error":
                            status = "error"
                            yield sse(error_body(ev.message, "server_error"))
                            return
                        if ev.kind == "token":
                            if not ev.text and not params.logprobs:
                                continue
                            ch = {"index": ev.index, "delta": {"content": ev.text},
                                  "logprobs": chat_logprobs(engine.tokenizer, [ev.token]) if params.logprobs else None,
                                  "finish_reason": None}
                        elif ev.kind == "finish":
                            if ev.text:
                                c = {**base, "choices": [{"index": ev.index, "delta": {"content": ev.text},
                                                          "logprobs": None, "finish_reason": None}]}
                                if include_usage:
                                    c["usage"] = None
                                yield sse(c)
                            ch = {"index": ev.index, "delta": {}, "logprobs": None, "finish_reason": ev.finish_reason}
                        else:
                            continue
                        c = {**base, "choices": [ch]}
                        if include_usage:
                            c["usage"] = None
                        yield sse(c)
                    status = "ok"
                    if include_usage:
                        ct = req.completion_tokens
                        yield sse({**base, "choices": [], "usage": {"prompt_tokens": len(prompt), "completion_tokens": ct,
                                                                    "total_tokens": len(prompt) + ct}})
                    yield "data: [DONE]\n\n"
                finally:
                    req.cancel()
                    await events.aclose()
                    srv.metrics.request("/v1/chat/completions", 200 if status == "ok" else 499)
                    finish_meter(status)

            return StreamingResponse(gen(), media_type="text/event-stream",
                                     headers={"cache-control": "no-cache", "x-accel-buffering": "no"})

        choices = [{"index": i, "message": {"role": "assistant", "content": "", "refusal": None, "annotations": []},
                    "logprobs": None, "finish_reason": None} for i in range(params.n)]
        toks = [[] for _ in range(params.n)]

        def handle(ev):
            if ev.kind == "error":
                raise ServeError(ev.message, status=500)
            if ev.kind == "token":
                toks[ev.index].append(ev.token)
                choices[ev.index]["message"]["content"] += ev.text
            elif ev.kind == "finish":
                choices[ev.index]["message"]["content"] += ev.text
                choices[ev.index]["finish_reason"] = ev.finish_reason

        await consume_metered(events, request, handle, [req], finish_meter)
        if params.logprobs:
            for i, c in enumerate(choices):
                c["logprobs"] = chat_logprobs(engine.tokenizer, toks[i])
        ct = req.completion_tokens
        srv.metrics.request("/v1/chat/completions", 200)
        return {"id": rid, "object": "chat.completion", "created": created, "model": engine.name,
                "system_fingerprint": engine.fingerprint, "choices": choices, "service_tier": "default",
                "usage": {"prompt_tokens": len(prompt), "completion_tokens": ct, "total_tokens": len(prompt) + ct}}

    # --- legacy completions ------------------------------------------------------------------------
    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request, key=Depends(require_key)):
        t0 = time.time()
        engine = srv.engine(body.model)
        tok = engine.tokenizer
        if body.suffix:
            raise ServeError("'suffix' is not supported by this model.", param="suffix")
        p = body.prompt
        if isinstance(p, list) and len(p) > 64 and not all(isinstance(x, int) for x in p):
            raise ServeError("at most 64 prompts per request", param="prompt")
        echo, want_lp = bool(body.echo), body.logprobs is not None
        n = body.n or 1
        # Cheap size check first (no tokenizer; see chat_completions).
        texts_in = [p] if isinstance(p, str) else [x for x in p if isinstance(x, str)] if isinstance(p, list) else []
        for x in texts_in:
            engine.check_size(len(x), SamplingParams(max_tokens=body.max_tokens, n=n, echo_logprobs=echo), "prompt")

        def tokenize():
            if isinstance(p, str):
                return [tok.encode(clean(p))]
            if p and all(isinstance(x, int) for x in p):
                return [list(p)]
            if p and all(isinstance(x, str) for x in p):
                return [tok.encode(clean(x)) for x in p]
            if p and all(isinstance(x, list) for x in p):
                return [list(x) for x in p]
            raise ServeError("'prompt' must be a string, a list of strings, a list of token ids or a list of lists "
                             "of token ids, and not empty.", param="prompt")

        prompts = await run_in_threadpool(tokenize)
        if len(prompts) > 64:
            raise ServeError("at most 64 prompts per request", param="prompt")
        for ids in prompts:
            bad = [t for t in ids if not 0 <= t < tok.vocab_size]
            if bad:
                raise ServeError(f"token id {bad[0]} is outside this model's vocabulary of {tok.vocab_size}.", param="prompt")

        def params():
            return SamplingParams(max_tokens=body.max_tokens, temperature=1.0 if body.temperature is None else body.temperature,
                                  top_p=1.0 if body.top_p is None else body.top_p, top_k=body.top_k or 0,
                                  stop=stop_list(body.stop), seed=body.seed, n=n, logprobs=want_lp,
                                  top_logprobs=body.logprobs or 0,
                                  echo_logprobs=echo and (want_lp or body.max_tokens == 0))

        if body.max_tokens == 0 and not echo:
            raise ServeError("'max_tokens' must be at least 1 unless 'echo' is true.", param="max_tokens")
        # The document starts with <|bos|> as in training; it is not echoed nor billed.
        full = [[tok.bos_id] + ids for ids in prompts]
        for ids in full:
            engine.check(len(ids), params(), param="prompt")
        prompt_tokens = sum(len(ids) for ids in prompts)
        if srv.store is not None:
            srv.store.check_rate(key, prompt_tokens + (body.max_tokens or 0) * n * len(prompts))
        rid = "cmpl-" + uuid.uuid4().hex[:24]
        created = int(time.time())
        started = []
        try:
            for ids in full:
                started.append(await engine.stream(ids, params(), owner=key.id if key else None))
        except ServeError:
            for r, ev in started:
                r.cancel()
            raise
        reqs = [r for r, _ in started]

        def completion_tokens():
            return sum(r.completion_tokens for r in reqs)

        meter = srv.open_meter(key, engine.name, "completions", prompt_tokens, reqs)

        def finish_meter(status):
            if meter.status is None:
                srv.metrics.latency(time.time() - t0, (min((r.first_token_at or time.time()) for r in reqs)) - t0)
                srv.close_meter(meter, status)

        async def merged():
            """Events of every prompt's request, tagged with the choice index prompt*n + j."""
            q: asyncio.Queue = asyncio.Queue()
            left = len(started)

            async def pump(k, evs):
                try:
                    async for ev in evs:
                        await q.put((k, ev))
                finally:
                    await q.put((k, None))

            tasks = [asyncio.create_task(pump(k, evs)) for k, (_, evs) in enumerate(started)]
            try:
                while left:
                    k, ev = await q.get()
                    if ev is None:
                        left -= 1
                        continue
                    yield k, ev
            finally:
                for t in tasks:
                    t.cancel()
                for r in reqs:
                    r.cancel()

        prompt_texts = [tok.decode(ids) for ids in prompts]
        prompt_lps = [None] * len(prompts)

        def prompt_part(k):
            lp = prompt_lps[k]
            return legacy_logprobs(tok, lp[1:]) if lp is not None else None

        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            base = {"id": rid, "object": "text_completion", "created": created, "model": engine.name,
                    "system_fingerprint": engine.fingerprint}

            async def gen():
                status = "cancelled"
                offsets = {}
                try:
                    async for k, ev in merged():
                        idx = k * n + ev.index
                        if ev.kind == "prompt":
                            prompt_lps[k] = ev.prompt
                            continue
                        if ev.kind == "error":
                            status = "error"
                            yield sse(error_body(ev.message, "server_error"))
                            return
                        if idx not in offsets:
                            offsets[idx] = 0
                            if echo:
                                lp = prompt_part(k) if want_lp else None
                                yield sse({**base, "choices": [{"text": prompt_texts[k], "index": idx, "logprobs": lp,
                                                                "finish_reason": None}]})
                                offsets[idx] = len(prompt_texts[k])
                        if ev.kind == "token":
                            if not ev.text and not want_lp:
                                continue
                            lp = legacy_logprobs(tok, [ev.token], offsets[idx]) if want_lp else None
                            offsets[idx] += len(ev.text)
                            yield sse({**base, "choices": [{"text": ev.text, "index": idx, "logprobs": lp, "finish_reason": None}]})
                        elif ev.kind == "finish":
                            yield sse({**base, "choices": [{"text": ev.text, "index": idx, "logprobs": None,
                                                            "finish_reason": ev.finish_reason}]})
                    status = "ok"
                    if include_usage:
                        ct = completion_tokens()
                        yield sse({**base, "choices": [], "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": ct,
                                                                    "total_tokens": prompt_tokens + ct}})
                    yield "data: [DONE]\n\n"
                finally:
                    for r in reqs:
                        r.cancel()
                    srv.metrics.request("/v1/completions", 200 if status == "ok" else 499)
                    finish_meter(status)

            return StreamingResponse(gen(), media_type="text/event-stream", headers={"cache-control": "no-cache"})

        texts = [""] * (len(prompts) * n)
        toks = [[] for _ in texts]
        reasons = [None] * len(texts)

        def handle(item):
            k, ev = item
            idx = k * n + ev.index
            if ev.kind == "prompt":
                prompt_lps[k] = ev.prompt
            elif ev.kind == "error":
                raise ServeError(ev.message, status=500)
            elif ev.kind == "token":
                toks[idx].append(ev.token)
                texts[idx] += ev.text
            elif ev.kind == "finish":
                texts[idx] += ev.text
                reasons[idx] = ev.finish_reason

        await consume_metered(merged(), request, handle, reqs, finish_meter)
        choices = []
        for idx in range(len(texts)):
            k = idx // n
            text, lp = texts[idx], None
            if echo:
                text = prompt_texts[k] + text
            if want_lp:
                if echo and prompt_lps[k] is not None:
                    lp = legacy_logprobs(tok, prompt_lps[k][1:] + toks[idx])
                else:
                    lp = legacy_logprobs(tok, toks[idx])
            choices.append({"text": text, "index": idx, "logprobs": lp, "finish_reason": reasons[idx]})
        ct = completion_tokens()
        srv.metrics.request("/v1/completions", 200)
        return {"id": rid, "object": "text_completion", "created": created, "model": engine.name,
                "system_fingerprint": engine.fingerprint, "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": ct, "total_tokens": prompt_tokens + ct}}

    # --- models, health, metrics, page ------------------------------------------------------------
    def model_card(e: Engine) -> dict:
        pp, pc = srv.price(e.name)
        return {"id": e.name, "object": "model", "created": srv.started, "owned_by": "glassgpt",
                "context_window": e.context_window, "vision": e.has_vision,
                "pricing": {"prompt_per_1k": pp, "completion_per_1k": pc}}

    @app.get("/v1/models")
    async def list_models(key=Depends(require_key)):
        srv.metrics.request("/v1/models", 200)
        return {"object": "list", "data": [model_card(e) for e in srv.engines.values()]}

    @app.get("/v1/models/{model_id}")
    async def get_model(model_id: str, key=Depends(require_key)):
        srv.metrics.request("/v1/models/{model_id}", 200)
        return model_card(srv.engine(model_id))

    @app.get("/health")
    async def health():
        alive = all(e.alive for e in srv.engines.values())
        body = {"status": "ok" if alive else "degraded", "models": list(srv.engines),
                "queue_depth": sum(e.queue_depth for e in srv.engines.values()),
                "running": sum(e.n_running for e in srv.engines.values()), "auth": srv.auth}
        return JSONResponse(body, status_code=200 if alive else 503)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics():
        return PlainTextResponse(srv.metrics.render(srv.engines.values()),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    web = resources.files("glassgpt.serve").joinpath("web")

    def page(name: str, media: str):
        path = Path(str(web.joinpath(name)))
        return FileResponse(path, media_type=media, headers={"cache-control": "no-cache"})

    @app.get("/", include_in_schema=False)
    async def index():
        return page("index.html", "text/html; charset=utf-8")

    @app.get("/app.js", include_in_schema=False)
    async def app_js():
        return page("app.js", "text/javascript; charset=utf-8")

    @app.get("/style.css", include_in_schema=False)
    async def style():
        return page("style.css", "text/css; charset=utf-8")

    # The page's Markdown renderer and sanitizer, shipped with the package (no CDN at run time).
    # Only the .js files that exist there are served, so a name from the URL never walks the tree.
    vendored = {p.name for p in web.joinpath("vendor").iterdir() if p.name.endswith(".js")}

    @app.get("/vendor/{name}", include_in_schema=False)
    async def vendor(name: str):
        if name not in vendored:
            raise StarletteHTTPException(404)
        return page("vendor/" + name, "text/javascript; charset=utf-8")

    def openapi():
        """The generated schema, with the served model ids as the `model` enum."""
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            for name in ("ChatCompletionRequest", "CompletionRequest"):
                prop = schema.get("components", {}).get("schemas", {}).get(name, {}).get("properties", {}).get("model")
                if prop is not None:
                    prop["enum"] = list(srv.engines)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    app.add_middleware(BodyLimit, limit=max_body, timeout=read_timeout)
    app.add_middleware(Gate, server=srv, bind_port=bind_port)  # added last: runs first, before the body is read
    return app


async def _wait_disconnect(request) -> None:
    """Returns when the client goes away. The body was read already, so the next ASGI
    message can only be `http.disconnect`: waiting on it costs nothing, no polling."""
    while True:
        msg = await request.receive()
        if msg["type"] == "http.disconnect":
            return


async def consume_metered(events, request, handle, reqs, finish_meter) -> None:
    """`consume` for a non-streaming request whose ledger row closes exactly once: ok, cancelled
    (the client went away: 499) or error; the engine requests are cancelled whatever happens."""
    status = "cancelled"
    try:
        await consume(events, request, handle)
        status = "ok"
    except ServeError as e:
        if e.status != 499:
            status = "error"
        raise
    except asyncio.CancelledError:  # the server is shutting down: the client got nothing
        raise
    except BaseException:
        status = "error"
        raise
    finally:
        for r in reqs:
            r.cancel()
        finish_meter(status)


async def consume(events, request, handle) -> None:
    """Feed every event of a non-streaming request to `handle`; if the client disconnects
    first, stop the generation and raise a 499.

    Not an async generator on purpose: a generator that is abandoned (the handler raised)
    is closed later by the loop, possibly while its own __anext__ is still running, which
    is the `aclose(): asynchronous generator is already running` error. Here the pending
    step is cancelled and awaited before the event iterator is closed, in this task."""
    it = events.__aiter__()
    gone = asyncio.ensure_future(_wait_disconnect(request))
    try:
        while True:
            nxt = asyncio.ensure_future(it.__anext__())
            await asyncio.wait({nxt, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not nxt.done():
                nxt.cancel()
                await asyncio.gather(nxt, return_exceptions=True)
                raise ServeError("The client closed the connection before the response was ready.",
                                 code="client_closed_request", status=499)
            try:
                ev = nxt.result()
            except StopAsyncIteration:
                return
            handle(ev)
    finally:
        gone.cancel()
        await asyncio.gather(gone, return_exceptions=True)
        await it.aclose()


def parse_prices(items: list[str] | None) -> dict[str, tuple[float, float]]:
    """['MODEL=PROMPT,COMPLETION', ...] ($ per 1K tokens; MODEL * for every model)."""
    out = {}
    for it in items or []:
        name, _, vals = it.partition("=")
        try:
            a, _, b = vals.partition(",")
            out[name or "*"] = (float(a), float(b or a))
        except ValueError:
            raise ServeError(f"bad --price '{it}': use MODEL=PROMPT_PER_1K,COMPLETION_PER_1K, e.g. '*=0.002,0.002'") from None
    return out


def serve(checkpoints: list[str], host: str = "127.0.0.1", port: int = 8000, no_auth: bool = False,
          db: str = "runs/serve/serve.db", names: list[str] | None = None, prices: list[str] | None = None,
          max_batch: int = 16, max_queue: int = 64, device: str | None = None, rpm: int | None = None,
          tpm: int | None = None, max_body: int = MAX_BODY, read_timeout: float = 30.0,
          precision: str | None = None, header_timeout: float = 10.0, threads: int | None = None) -> None:
    """Load every checkpoint (a corrupt one stops start-up with a clear error), then serve.
    threads: torch's CPU threads for the engines (default: one core fewer than the machine has,
    at least one, so that the event loop keeps a core for HTTP)."""
    import os

    import torch
    import uvicorn

    if no_auth and not is_loopback(host):
        raise ServeError(f"--no-auth serves without keys and is only allowed on a loopback host, not '{host}'; "
                         "create a key with `glassgpt keys create` instead")
    if not checkpoints:
        raise ServeError("pass at least one --checkpoint DIR")
    if not header_timeout > 0:
        raise ServeError(f"--header-timeout must be a positive number of seconds, not {header_timeout}")
    if threads is not None and threads < 1:
        raise ServeError(f"--threads must be at least 1, not {threads}")
    names = list(names or [])
    if names and len(names) != len(checkpoints):
        raise ServeError("give one --model-name per --checkpoint, or none")
    # On a small CPU box the engine's matmul threads and the event loop compete for the same
    # cores: beside one busy core, torch on both of 2 cores made a 32-row decode step 3-4x slower
    # than on one (bench/serve_contention.py: OpenMP's threads wait for each other).
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(threads or max(1, cores - 1))
    engines = [Engine.from_checkpoint(ck, name=names[i] if names else None, device=device,
                                      max_batch=max_batch, max_queue=max_queue, precision=precision)
               for i, ck in enumerate(checkpoints)]
    store = Store(db, default_rpm=rpm, default_tpm=tpm)
    closed = store.reconcile()  # rows a killed server left running: billed up to its last write
    if closed:
        log.warning("closed %d usage row(s) left running by a previous server (status 'error')", closed)
    app = create_app(engines, store, auth=not no_auth, prices=parse_prices(prices), max_body=max_body, bind_port=port,
                     read_timeout=read_timeout)
    log.info("serving %s on http://%s:%d (auth %s)", ", ".join(e.name for e in engines), host, port,
             "off" if no_auth else "on")
    # timeout_keep_alive closes idle connections between requests, the protocol closes one whose
    # request head is not complete within header_timeout (slowloris), and h11's size limit on an
    # incomplete head (16 KB by default) bounds what it can hold meanwhile.
    from glassgpt.serve.http import protocol

    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_keep_alive=5, http=protocol(header_timeout))
