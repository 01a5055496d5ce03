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
import binascii
import codecs
import collections
import gc
import io
import ipaddress
import json
import logging
import math
import re
import threading
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

from glassgpt.config import CHAT_STAGES
from glassgpt.data import chat
from glassgpt.serve.engine import Engine, SamplingParams, token_bytes, token_text
from glassgpt.serve.errors import ContextLengthError, ServeError
from glassgpt.serve.metrics import Metrics
from glassgpt.serve.schema import ChatCompletionRequest, CompletionRequest, DetokenizeRequest, TokenizeRequest
from glassgpt.serve.store import DEFAULT_PRICE, KNOWN_PRICES, Store

log = logging.getLogger(__name__)

MAX_BODY = 32 * 1024 * 1024  # bytes; a bigger body is a 413
DRAIN_PAUSE = 0.002  # seconds between the chunks (64 KB) of a body already refused
INLINE_CHARS = 2000  # a text-only chat this short is tokenized on the event loop, not in a worker
MAX_IMAGE = 16 * 1024 * 1024  # decoded bytes of one image
MAX_REQUEST_PIXELS = 4096 * 4096  # all images of one request, from their headers, before decoding
_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^;,]*)*?);base64,(?P<data>.*)$", re.S)
_IMAGE_MAGIC = {
    "png": (b"\x89PNG\r\n\x1a\n",),
    "jpeg": (b"\xff\xd8\xff",),
    "gif": (b"GIF87a", b"GIF89a"),
    "webp": (b"RIFF",),
}


# Paths under the API key (and its rate limit): the OpenAI routes and vLLM's tokenizer routes.
API_PREFIXES = ("/v1/", "/tokenize", "/detokenize", "/tokenizer_info")


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
    data = "".join(m.group("data").split())  # whitespace out: 20x faster than re.sub on 0.5 MB
    if len(data) * 3 // 4 > max_bytes:
        raise ServeError(f"Image too large: {len(data) * 3 // 4:,} bytes; the limit is {max_bytes:,}.", param=param,
                         code="image_too_large", status=413)
    try:
        raw = binascii.a2b_base64(data, strict_mode=True)  # b64decode's validate is a regex: 2x slower
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
    names = {}  # tool call id -> function name, from the assistant turns so far
    for i, m in enumerate(body.messages):
        role = {"developer": "system", "tool": "user"}.get(m.role, m.role)
        if m.role not in ("system", "developer", "user", "assistant", "tool"):
            raise ServeError(f"Invalid value: '{m.role}'. Supported values are: 'system', 'assistant', 'user', 'tool', "
                             "and 'developer'.", param=f"messages[{i}].role", code="invalid_value")
        # Any order is accepted, as OpenAI accepts it: system messages anywhere (openai/evals
        # sends few-shot examples as system turns), an assistant turn first, and two turns of
        # the same role in a row (LangChain sends them), which are merged into one turn below
        # so that the model sees alternating turns as in training. A tool's result is a user
        # turn to the model (it comes from outside), rendered by glassgpt.data.chat.
        c = m.content
        if m.tool_calls and m.role != "assistant":
            raise ServeError(f"messages[{i}]: only assistant messages may have 'tool_calls'.",
                             param=f"messages[{i}].tool_calls", code="invalid_value")
        if m.role == "tool" and not m.tool_call_id:
            raise ServeError(f"Missing parameter 'tool_call_id': messages[{i}] with role 'tool' must answer a tool call.",
                             param=f"messages[{i}].tool_call_id", code="missing_required_parameter")
        if c is None and not (m.role == "assistant" and m.tool_calls):
            raise ServeError(f"messages[{i}].content is required.", param=f"messages[{i}].content", code="invalid_value")
        if c is None:
            c = ""
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
                    if m.role != "user":
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
        if role == "user" and not m.tool_calls and all(p["type"] == "text" and not p["text"].strip() for p in parts):
            raise ServeError(f"messages[{i}].content: a user message must not be empty or only whitespace.",
                             param=f"messages[{i}].content", code="invalid_value")
        if m.role == "tool":
            text = "".join(p["text"] for p in parts)  # text only: images are refused above
            parts = [{"type": "text", "text": chat.tool_result_text(text, names.get(m.tool_call_id), m.tool_call_id)}]
        if m.tool_calls:
            for call in m.tool_calls:
                names[call.id] = call.function.name
            calls = [{"name": t.function.name, "arguments": clean(t.function.arguments)} for t in m.tool_calls]
            parts = [p for p in parts if p["type"] != "text" or p["text"]] + [{"type": "text", "text": chat.tool_calls_text(calls)}]
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
    if engine.stage in CHAT_STAGES and not any(m["role"] == "system" for m in out):
        # a chat-tuned model was tuned under this system prompt: without it, it answers worse
        out.insert(0, {"role": "system", "content": [{"type": "text", "text": chat.DEFAULT_SYSTEM}]})
    if body.tools and body.tool_choice != "none":  # the functions join the (first) system turn
        listing = chat.tools_text([t.function.model_dump(exclude={"strict"}) for t in body.tools])
        if out and out[0]["role"] == "system":
            out[0]["content"] = out[0]["content"] + [{"type": "text", "text": "\n\n" + listing}]
        else:
            out.insert(0, {"role": "system", "content": [{"type": "text", "text": listing}]})
    return out


def clean(text: str) -> str:
    """JSON may carry lone surrogates (\\ud800), which are not UTF-8: replace them."""
    return text.encode("utf-8", "replace").decode("utf-8")


def sampling_extras(body, engine: Engine, chat_request: bool = False) -> dict:
    """logit_bias and the penalties as SamplingParams fields, validated as OpenAI validates them. A chat
    request to a chat-tuned model that leaves DRY unset gets chat.DEFAULT_SAMPLING's."""
    bias = None
    if body.logit_bias:
        if len(body.logit_bias) > 300:
            raise ServeError("Invalid 'logit_bias': at most 300 tokens may be biased.", param="logit_bias",
                             code="invalid_value")
        bias, vocab = {}, engine.tokenizer.vocab_size
        for k, v in body.logit_bias.items():
            if not re.fullmatch(r"[0-9]{1,12}", k):
                raise ServeError(f"Invalid key in 'logit_bias': {k[:40]}. Keys must be token ids (non-negative "
                                 "integers, as strings).", param="logit_bias", code="invalid_value")
            if int(k) >= vocab:
                raise ServeError(f"Invalid key in 'logit_bias': {k}. This model's token ids are 0 to {vocab - 1}.",
                                 param="logit_bias", code="invalid_value")
            if not -100 <= v <= 100:
                raise ServeError(f"Invalid value for 'logit_bias' key {k}: {v}. Values must be between -100 and 100.",
                                 param="logit_bias", code="invalid_value")
            bias[int(k)] = float(v)
    extras = {"logit_bias": bias, "presence_penalty": body.presence_penalty or 0.0,
              "frequency_penalty": body.frequency_penalty or 0.0, "dry_multiplier": 0.0}
    if chat_request and engine.stage in CHAT_STAGES:
        extras.update(chat.DEFAULT_SAMPLING)
    # what the request sets wins over the defaults
    extras.update({k: v for k in ("dry_multiplier", "dry_base", "dry_allowed_length")
                   if (v := getattr(body, k)) is not None})
    return extras


def constraint_for(body: ChatCompletionRequest, srv: "Server", engine: Engine):
    """The grammar a chat request's answer must follow (response_format, tools), as a
    grammar.Constraint, or None. Runs in a worker thread: compiling takes milliseconds."""
    rf, tools, choice = body.response_format, body.tools or [], body.tool_choice
    if body.functions is not None or body.function_call is not None:
        field = "functions" if body.functions is not None else "function_call"
        raise ServeError(f"'{field}' is deprecated and not supported here; use 'tools' and 'tool_choice'.",
                         param=field, code="unsupported_parameter")
    if choice is not None and not tools:
        raise ServeError("'tool_choice' is only allowed when 'tools' are specified.", param="tool_choice",
                         code="invalid_value")
    text_json = rf is not None and rf.type != "text"
    schema = None
    if rf is not None and rf.type == "json_schema":
        if rf.json_schema is None:
            raise ServeError("Missing required parameter: 'response_format.json_schema'.",
                             param="response_format.json_schema", code="missing_required_parameter")
        schema = rf.json_schema.schema_ if rf.json_schema.schema_ is not None else {}
    mode = "none" if choice == "none" or not tools else "auto" if choice in (None, "auto") else "required"
    if not text_json and mode == "none":
        return None
    g = srv.grammars(engine)
    if mode == "none":
        return g.matcher(g.json_schema(schema, "response_format"), "response_format.json_schema.schema")
    seen = set()
    for i, t in enumerate(tools):
        if t.function.name in seen:
            raise ServeError(f"Duplicate function name '{t.function.name}' in 'tools'.", param=f"tools[{i}].function.name",
                             code="invalid_value")
        seen.add(t.function.name)
        g.matcher(g.json_schema(t.function.parameters, "tools"), f"tools[{i}].function.parameters")  # names a bad one
    fns = [t.function.model_dump(include={"name", "parameters"}) for t in tools]
    if not isinstance(choice, (str, type(None))):
        fns = [f for f in fns if f["name"] == choice.function.name]
        if not fns:
            raise ServeError(f"Invalid 'tool_choice': no function named '{choice.function.name}' in 'tools'.",
                             param="tool_choice.function.name", code="invalid_value")
    grammar = g.tool_grammar(fns, mode, schema, text_json, parallel=body.parallel_tool_calls is not False)
    return g.matcher(grammar, "tools")


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


def legacy_token(tok, tid: int) -> str:
    """A token as OpenAI's legacy logprobs name it: its text when its bytes are whole UTF-8,
    else `bytes:\\xNN...` (a piece of a character; keys stay distinct instead of all
    becoming U+FFFD), and a special token by its name (`<|bos|>`), as OpenAI shows
    `<|endoftext|>`."""
    if tid in tok.special_names:
        return tok.special_names[tid]
    raw = tok.decode_bytes([tid])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


def legacy_logprobs(tok, infos, text_start: int = 0, text_len: int | None = None, first_null: bool = False,
                    names_in_text: bool = False) -> dict:
    """OpenAI's legacy `logprobs` object for a run of tokens.

    text_offset: where each token starts in the text, counted in characters of the decoded
    text (a token that ends inside a character starts where that character starts), and
    never past `text_len` (a stop sequence may have cut the text short). top_logprobs
    always holds the chosen token too, as OpenAI's does, so it has up to k+1 entries.
    first_null: the first token is the start of an echoed prompt, which has no logprob.
    names_in_text: the text shows special tokens by name (an echoed token-id prompt)."""
    dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
    tokens, lps, tops, offs = [], [], [], []
    off = text_start
    end = None if text_len is None else text_start + text_len
    for i, t in enumerate(infos):
        name = legacy_token(tok, t.id)
        tokens.append(name)
        offs.append(off if end is None else min(off, end))
        if names_in_text and t.id in tok.special_names:
            off += len(dec.decode(b"", final=True)) + len(name)
            dec.reset()
        else:
            off += len(dec.decode(tok.decode_bytes([t.id])))
        if first_null and i == 0 or t.logprob is None:
            lps.append(None)
            tops.append(None)
            continue
        lps.append(t.logprob)
        top = {legacy_token(tok, j): lp for j, lp in t.top}
        top.setdefault(name, t.logprob)
        tops.append(top)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offs}


def echo_text(tok, ids) -> str:
    """The text of a token-id prompt: its bytes as UTF-8, special tokens by name."""
    out, run = [], []
    for t in ids:
        if t in tok.special_names:
            out.append(tok.decode(run) + tok.special_names[t])
            run = []
        else:
            run.append(t)
    return "".join(out) + tok.decode(run)


def usage_body(prompt_tokens: int, completion_tokens: int) -> dict:
    """`usage` with the detail objects OpenAI sends (no prompt cache, no reasoning, no audio)."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}


class ToolCallText:
    """One choice's text read as a tool-call answer or a text answer. With tools, the grammar
    keeps a text answer from beginning with '<', so the first character decides: a call answer
    is `<tool_call>{...}</tool_call>`… (glassgpt.data.chat's format); each complete call becomes
    an OpenAI tool call. A call answer cut before any call completed stays text, as the
    non-streaming answer has it."""

    def __init__(self):
        self.text, self.calling, self.calls = "", None, []

    def feed(self, text: str) -> tuple[str, list[tuple[int, dict]]]:
        """Add text; returns (content to show, [(index, call)] newly complete)."""
        self.text += text
        if self.calling is None and self.text:
            self.calling = self.text.startswith("<")
        if not self.calling:
            return text, []
        found = chat.parse_tool_calls(self.text)
        new = []
        for k in range(len(self.calls), len(found)):
            call = {"id": "call_" + uuid.uuid4().hex[:24], "type": "function", "function": found[k]}
            self.calls.append(call)
            new.append((k, call))
        return "", new


def sse(obj) -> str:
    return "data: " + json.dumps(obj, separators=(",", ":")) + "\n\n"


async def coalesced(chunks, pending):
    """Server-sent events that are ready together go out together: one pass down the ASGI stack
    and one system call instead of one per token (per token, that path cost the event loop more
    than the engine's step did). `pending()`: events queued and not yet read; while there are
    any, the next chunks come without waiting, so the batch is bounded by what was queued."""
    buf = []
    try:
        async for c in chunks:
            buf.append(c)
            if not pending():
                yield "".join(buf)
                buf = []
        if buf:
            yield "".join(buf)
    finally:
        await chunks.aclose()


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
        self.tarpit: Tarpit | None = None  # see create_app's refusal_delay
        self.started = int(time.time())
        self.live: set[Meter] = set()  # meters of requests still running
        self.meter_interval = 1.0  # seconds between writes of running requests' tokens
        self._grammars: dict[str, object] = {}
        self._grammars_lock = threading.Lock()

    def grammars(self, engine: Engine):
        """The grammar library's view of an engine's tokenizer, built at the first request that needs it."""
        with self._grammars_lock:
            if engine.name not in self._grammars:
                from glassgpt.serve.grammar import Grammars

                self._grammars[engine.name] = Grammars(engine.tokenizer, engine.tokenizer.special["<|assistant_end|>"])
            return self._grammars[engine.name]

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


async def drain(receive, cap: int, timeout: float) -> bool:
    """Discard a request body, at most `cap` bytes of it, within `timeout` seconds. Returns
    whether all of it was read (the connection can then serve the client's next request)."""
    seen, more = 0, True
    deadline = time.monotonic() + timeout
    try:
        while more and seen <= cap:
            msg = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            if msg["type"] == "http.disconnect":
                return False
            seen += len(msg.get("body", b""))
            more = msg.get("more_body", False)
    except TimeoutError:
        return False
    return not more


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


class Tarpit:
    """Slower refusals for a key whose requests keep being refused. A client that sends, back to
    back, requests the server must read before it can refuse them (10 MB prompts, pixel bombs)
    took as much of the event loop as the server could give; each of its refusals now waits
    `base` x its recent refusals (decaying with time constant `tau`, at most `cap` seconds), a
    refusal counting 1 + the megabytes the server had to read for it. Waiting costs the server
    nothing; an honest client's occasional 400 waits ~0 ms."""

    def __init__(self, base: float = 0.01, tau: float = 10.0, cap: float = 1.0, size: int = 10_000):
        self.base, self.tau, self.cap, self.size = base, tau, cap, size
        self.scores: collections.OrderedDict = collections.OrderedDict()  # key id -> (score, when), LRU

    def delay(self, key_id, size: int = 0, now: float | None = None) -> float:
        """Count one more refusal of key_id, whose body had `size` bytes; returns how long to hold
        its answer back (nothing for a key's first)."""
        now = time.monotonic() if now is None else now
        score, t = self.scores.pop(key_id, (0.0, now))
        before = score * math.exp(-(now - t) / self.tau)
        self.scores[key_id] = (before + 1 + size / 2**20, now)
        if len(self.scores) > self.size:
            self.scores.popitem(last=False)
        return min(self.cap, self.base * before)


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

    def __init__(self, app, server: "Server", bind_port: int | None = None, read_timeout: float = 30.0):
        self.app, self.srv, self.bind_port, self.read_timeout = app, server, bind_port, read_timeout

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
                    if self.srv.tarpit and scope["method"] == "POST" and msg["status"] in (400, 413, 422):
                        try:
                            size = int(headers.get("content-length", 0))
                        except ValueError:
                            size = 0
                        wait = self.srv.tarpit.delay(key.id, min(size, self.srv.max_body))
                        if wait > 0:
                            await asyncio.sleep(wait)
                msg = {**msg, "headers": list(msg.get("headers") or []) + extra}
            await send(msg)

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
        try:
            if not self.srv.auth:
                e = self._local_check(scope, headers)
                if e is not None:
                    raise e
            elif scope["path"].startswith(API_PREFIXES):
                key = self.srv.store.authenticate(headers.get("authorization"))
                scope.setdefault("state", {})["api_key"] = key  # for the x-ratelimit-* headers, 429 included
                if scope["method"] == "POST":
                    self.srv.store.precheck_rate(key)
        except ServeError as e:
            self.srv.metrics.request(route_label(scope["app"], scope) if "app" in scope else "unmatched", e.status)
            # Read and drop the body (up to the body limit, never kept) so that the client gets
            # to read the refusal instead of a reset connection in the middle of its upload.
            # Keep-alive when the whole body was read: a client refused again and again need not
            # open a connection each time (accepting and closing cost the event loop as much as the refusal).
            whole = await drain(receive, self.srv.max_body, self.read_timeout)
            return await send_json(send_secure, e.status, error_body(str(e), e.type, e.param, e.code),
                                   {**(error_headers(e) or {}), **({} if whole else {"connection": "close"})})
        return await self.app(scope, receive, send_secure)


class TextMeter:
    """Counts a JSON body's bytes outside its base64 data (`...;base64,<data>"`) as the body
    streams in, chunk by chunk, without parsing it: what could become prompt text. (Scanning
    10 MB at once held the GIL for ~8 ms; a 64 KB chunk takes ~50 us.)"""

    MARK = b";base64,"

    def __init__(self):
        self.text, self.in_data, self.carry = 0, False, b""

    def feed(self, chunk: bytes) -> int:
        buf, i = self.carry + chunk, 0
        self.carry = b""
        while i < len(buf):
            if self.in_data:  # base64 data runs to the closing quote
                j = buf.find(b'"', i)
                if j < 0:
                    break
                self.in_data, i = False, j
            else:
                j = buf.find(self.MARK, i)
                if j < 0:  # the last bytes may begin a marker: judged with the next chunk
                    keep = min(len(self.MARK) - 1, len(buf) - i)
                    self.text += len(buf) - i - keep
                    self.carry = buf[len(buf) - keep:]
                    break
                self.text += j + len(self.MARK) - i
                self.in_data, i = True, j + len(self.MARK)
        return self.text + len(self.carry)


class BodyLimit:
    """ASGI middleware: a body over the limit (by Content-Length or as it streams) is a 413,
    and a body that does not arrive within `timeout` seconds is a 408.

    A declared Content-Length over the limit is refused at once: the body is read and dropped up
    to twice the limit in all (so that an ordinary client reads the 413 instead of a reset) and
    the connection is closed, so `Content-Length: 10**12` cannot keep a connection busy.
    uvicorn has no timeout for a body that stops halfway; this is it."""

    def __init__(self, app, limit: int, timeout: float = 30.0, server: "Server | None" = None):
        self.app, self.limit, self.timeout, self.srv = app, limit, timeout, server

    def text_cap(self, path: str) -> int | None:
        """The most text (TextMeter) a request that fits the context can hold: at most context x
        the longest token's bytes characters (Engine.check_size), each at most 12 bytes of JSON
        (a surrogate pair escaped); /v1/completions takes up to 64 prompts; 1 MB is left for
        everything else (tools, schemas). None: no cap on this path."""
        if self.srv is None or path not in ("/v1/chat/completions", "/v1/completions"):
            return None
        return (64 if path == "/v1/completions" else 1) * 12 * max(
            e.context_window * e.max_token_bytes for e in self.srv.engines.values()) + (1 << 20)

    def too_much_text(self, path: str, n: int, cap: int) -> ContextLengthError:
        ctx = max(e.context_window for e in self.srv.engines.values())
        where = "prompt" if path == "/v1/completions" else "messages"
        return ContextLengthError(
            f"This model's maximum context length is {ctx} tokens. However, your request holds {n:,} bytes of "
            f"text, more than any request within that context can ({cap:,} bytes). Please reduce the length of "
            f"the {where}.", param=where)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        hdrs = scope.get("headers") or []
        ctype = dict(hdrs).get(b"content-type", b"")
        if scope["path"].startswith(API_PREFIXES) and b"json" not in ctype:
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
        size = 0  # body bytes read

        async def next_message():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            return await asyncio.wait_for(receive(), left)

        if not too_big:
            chunks, more = [], True
            cap, meter, text = self.text_cap(scope["path"]), TextMeter(), 0
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
                    if cap is not None and size > cap:
                        text = meter.feed(chunk)
                        if text > cap:  # refused whatever follows: the rest is read and dropped
                            chunks = None
                    elif cap is not None:
                        meter.feed(chunk)
                    if chunks is not None:
                        chunks.append(chunk)
                    elif more:
                        # Read the rest of a refused body slowly (the socket's flow control holds the client
                        # meanwhile): at full speed, 10 MB took the event loop ~20 ms in one burst.
                        await asyncio.sleep(DRAIN_PAUSE)
            except TimeoutError:
                return await send_json(send, 408, error_body(
                    f"The request body did not arrive within {self.timeout:g} seconds.", code="request_timeout"),
                    {"connection": "close"})
            if not too_big and chunks is None:
                e = self.too_much_text(scope["path"], text, cap)
                self.srv.metrics.request(scope["path"], e.status)
                return await send_json(send, e.status, error_body(str(e), param=e.param, code=e.code))
            if not too_big:
                body, sent = b"".join(chunks), False

                async def replay():
                    nonlocal sent
                    if not sent:
                        sent = True
                        return {"type": "http.request", "body": body, "more_body": False}
                    return await receive()

                return await self.app(scope, replay, send)
        # Read and drop the rest, up to twice the limit in all, within the time left, then answer and close:
        # unread bytes at the close make the kernel reset the connection, and a reset can discard the 413 before
        # the client reads it (a declared Content-Length over the limit has had nothing read yet).
        await drain(receive, 2 * self.limit - size, deadline - time.monotonic())
        await send_json(send, 413, error_body(f"Request body too large: the limit is {self.limit:,} bytes.",
                                              code="request_too_large"), {"connection": "close"})


def create_app(engines: list[Engine], store: Store | None = None, auth: bool = True, prices=None,
               max_body: int = MAX_BODY, max_image: int = MAX_IMAGE, max_pixels: int = MAX_REQUEST_PIXELS,
               bind_port: int | None = None, read_timeout: float = 30.0, refusal_delay: float = 0.0):
    """bind_port: the port the server listens on; without keys, requests must name it in Host.
    read_timeout: seconds a client has to send its whole request body.
    refusal_delay: the most a key's refused requests are held back once it keeps sending
    requests that are refused (Tarpit); 0: never."""
    srv = Server(engines, store, auth, prices, max_body, max_image, max_pixels)
    if refusal_delay > 0:
        srv.tarpit = Tarpit(cap=refusal_delay)

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
            logprobs=bool(body.logprobs), top_logprobs=body.top_logprobs or 0,
            **sampling_extras(body, engine, chat_request=True))
        # With tools (and tool_choice not "none") an answer that starts with a call is returned as tool_calls.
        tools_on = bool(body.tools) and body.tool_choice != "none"
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
            params.constraint = constraint_for(body, srv, engine)
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

        # A short text-only chat tokenizes in well under a millisecond: on the event loop it costs
        # less than the hop to a worker thread and back (which, under load, waited for the GIL twice).
        short = chars <= INLINE_CHARS and not body.tools and (body.response_format is None or body.response_format.type == "text") \
            and all(isinstance(m.content, str) or all(p.type == "text" for p in m.content) for m in body.messages if m.content)
        prompt, want = prepare() if short else await run_in_threadpool(prepare)
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

        calls = [ToolCallText() for _ in range(params.n)]

        def tool_chunks(index: int, text: str):
            """Chunks for one choice's new text: content deltas, or tool_calls deltas as calls complete."""
            content, new = calls[index].feed(text)
            deltas = [{"content": content}] if content else []
            for k, call in new:  # OpenAI's shape: id, type and name first, then the arguments
                deltas.append({"tool_calls": [{"index": k, "id": call["id"], "type": "function",
                                               "function": {"name": call["function"]["name"], "arguments": ""}}]})
                deltas.append({"tool_calls": [{"index": k, "function": {"arguments": call["function"]["arguments"]}}]})
            for d in deltas:
                c = {**base, "choices": [{"index": index, "delta": d, "logprobs": None, "finish_reason": None}]}
                if include_usage:
                    c["usage"] = None
                yield c

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
                            if tools_on:
                                for c in tool_chunks(ev.index, ev.text):
                                    yield sse(c)
                                if not params.logprobs:
                                    continue
                                ch = {"index": ev.index, "delta": {}, "finish_reason": None,
                                      "logprobs": chat_logprobs(engine.tokenizer, [ev.token])}
                            else:
                                ch = {"index": ev.index, "delta": {"content": ev.text},
                                      "logprobs": chat_logprobs(engine.tokenizer, [ev.token]) if params.logprobs else None,
                                      "finish_reason": None}
                        elif ev.kind == "finish":
                            if tools_on:
                                for c in tool_chunks(ev.index, ev.text):
                                    yield sse(c)
                                held = calls[ev.index]
                                if held.calling and not held.calls and held.text:  # cut before a call completed
                                    c = {**base, "choices": [{"index": ev.index, "delta": {"content": held.text},
                                                              "logprobs": None, "finish_reason": None}]}
                                    if include_usage:
                                        c["usage"] = None
                                    yield sse(c)
                            elif ev.text:
                                c = {**base, "choices": [{"index": ev.index, "delta": {"content": ev.text},
                                                          "logprobs": None, "finish_reason": None}]}
                                if include_usage:
                                    c["usage"] = None
                                yield sse(c)
                            reason = ev.finish_reason
                            if tools_on and reason == "stop" and calls[ev.index].calling:
                                reason = "tool_calls"
                            ch = {"index": ev.index, "delta": {}, "logprobs": None, "finish_reason": reason}
                        else:
                            continue
                        c = {**base, "choices": [ch]}
                        if include_usage:
                            c["usage"] = None
                        yield sse(c)
                    status = "ok"
                    if include_usage:
                        ct = req.completion_tokens
                        yield sse({**base, "choices": [], "usage": usage_body(len(prompt), ct)})
                    yield "data: [DONE]\n\n"
                finally:
                    req.cancel()
                    await events.aclose()
                    srv.metrics.request("/v1/chat/completions", 200 if status == "ok" else 499)
                    finish_meter(status)

            return StreamingResponse(coalesced(gen(), req.pending), media_type="text/event-stream",
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
        for i, c in enumerate(choices):
            if tools_on:
                calls[i].feed(c["message"]["content"])
                if calls[i].calls:  # a call cut by max_tokens stays text, with finish_reason "length"
                    c["message"].update(content=None, tool_calls=calls[i].calls)
                    if c["finish_reason"] == "stop":
                        c["finish_reason"] = "tool_calls"
        if params.logprobs:
            for i, c in enumerate(choices):
                c["logprobs"] = chat_logprobs(engine.tokenizer, toks[i])
        ct = req.completion_tokens
        srv.metrics.request("/v1/chat/completions", 200)
        return {"id": rid, "object": "chat.completion", "created": created, "model": engine.name,
                "system_fingerprint": engine.fingerprint, "choices": choices, "service_tier": "default",
                "usage": usage_body(len(prompt), ct)}

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
                                  echo_logprobs=echo and (want_lp or body.max_tokens == 0), **extras)

        extras = sampling_extras(body, engine)
        if body.best_of is not None and body.best_of < n:
            raise ServeError(f"'best_of' ({body.best_of}) must be at least 'n' ({n}).", param="best_of",
                             code="invalid_value")
        if body.best_of is not None and body.best_of > n:
            # Generating best_of candidates and returning the n most likely is not implemented: refused
            # rather than silently returning n unranked samples.
            raise ServeError("'best_of' greater than 'n' is not supported by this server; leave it out or set it "
                             "equal to 'n'.", param="best_of", code="unsupported_parameter")

        if body.max_tokens == 0 and not echo:
            raise ServeError("'max_tokens' must be at least 1 unless 'echo' is true.", param="max_tokens")
        # A text prompt is a document, which starts with <|bos|> as in training (not echoed, not
        # billed). Token ids are taken as given, as vLLM takes them: a client that scores text
        # (lm-eval's rolling windows) sends its own <|bos|> and must not get a second one.
        from_text = not (p and isinstance(p, list) and not all(isinstance(x, str) for x in p))
        lead = [tok.bos_id] if from_text else []
        full = [lead + ids for ids in prompts]
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

        # Token-id prompts are echoed with their special tokens by name, as OpenAI echoes <|endoftext|>.
        prompt_texts = [tok.decode(ids) if from_text else echo_text(tok, ids) for ids in prompts]
        prompt_lps = [None] * len(prompts)

        def prompt_infos(k):
            return prompt_lps[k][len(lead):] if prompt_lps[k] is not None else []

        def prompt_part(k):
            if prompt_lps[k] is None:
                return None
            return legacy_logprobs(tok, prompt_infos(k), text_len=len(prompt_texts[k]), first_null=True,
                                   names_in_text=not from_text)

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
                            lp = legacy_logprobs(tok, [ev.token], offsets[idx], len(ev.text)) if want_lp else None
                            offsets[idx] += len(ev.text)
                            yield sse({**base, "choices": [{"text": ev.text, "index": idx, "logprobs": lp, "finish_reason": None}]})
                        elif ev.kind == "finish":
                            yield sse({**base, "choices": [{"text": ev.text, "index": idx, "logprobs": None,
                                                            "finish_reason": ev.finish_reason}]})
                    status = "ok"
                    if include_usage:
                        ct = completion_tokens()
                        yield sse({**base, "choices": [], "usage": usage_body(prompt_tokens, ct)})
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
                    head = prompt_part(k)
                    tail = legacy_logprobs(tok, toks[idx], len(prompt_texts[k]), len(text) - len(prompt_texts[k]))
                    lp = {f: head[f] + tail[f] for f in head}
                else:
                    lp = legacy_logprobs(tok, toks[idx], text_len=len(text))
            choices.append({"text": text, "index": idx, "logprobs": lp, "finish_reason": reasons[idx]})
        ct = completion_tokens()
        srv.metrics.request("/v1/completions", 200)
        return {"id": rid, "object": "text_completion", "created": created, "model": engine.name,
                "system_fingerprint": engine.fingerprint, "choices": choices,
                "usage": usage_body(prompt_tokens, ct)}

    # --- the tokenizer, as vLLM's endpoints have it (lm-evaluation-harness probes them) ----------------
    def engine_for(model: str | None) -> Engine:
        if model is None:
            if len(srv.engines) > 1:
                raise ServeError(f"This server has {len(srv.engines)} models; say which one with 'model'.",
                                 param="model", code="missing_required_parameter")
            return next(iter(srv.engines.values()))
        return srv.engine(model)

    @app.get("/tokenizer_info")
    async def tokenizer_info(model: str | None = None, key=Depends(require_key)):
        e = engine_for(model)
        srv.metrics.request("/tokenizer_info", 200)
        return e.tokenizer.hf_config(e.context_window)

    @app.post("/tokenize")
    async def tokenize_route(body: TokenizeRequest, key=Depends(require_key)):
        e = engine_for(body.model)
        tok = e.tokenizer
        if (body.prompt is None) == (body.messages is None):
            raise ServeError("Send either 'prompt' (text) or 'messages' (chat), not both or neither.",
                             param="prompt" if body.prompt is None else "messages", code="invalid_value")
        # Text far beyond what the context could hold is refused before tokenizing (seconds of work).
        chars = len(body.prompt or "") + sum(len(m.content) if isinstance(m.content, str) else
                                             sum(len(c.text or "") for c in m.content)
                                             for m in body.messages or [] if m.content)
        if chars > e.context_window * e.max_token_bytes * 4:
            where = "prompt" if body.prompt is not None else "messages"
            raise ContextLengthError(f"The {where} is too long to tokenize here: {chars:,} characters, when this "
                                     f"model's context holds {e.context_window} tokens.", param=where)

        def work():
            if body.prompt is not None:
                ids = tok.encode_with_specials(clean(body.prompt))
                return [tok.bos_id] + ids if body.add_special_tokens in (None, True) else ids
            chat = ChatCompletionRequest(model=e.name, messages=body.messages)
            # The chat rendering has its <|bos|> already, as the chat endpoint bills it.
            return tok.render_chat(chat_messages(chat, e), add_generation_prompt=body.add_generation_prompt is not False,
                                   n_image_tokens=e.image_tokens)

        ids = await run_in_threadpool(work)
        srv.metrics.request("/tokenize", 200)
        return {"count": len(ids), "max_model_len": e.context_window, "tokens": ids,
                "token_strs": [legacy_token(tok, i) for i in ids] if body.return_token_strs else None}

    @app.post("/detokenize")
    async def detokenize_route(body: DetokenizeRequest, key=Depends(require_key)):
        e = engine_for(body.model)
        bad = [t for t in body.tokens if not 0 <= t < e.tokenizer.vocab_size]
        if bad:
            raise ServeError(f"token id {bad[0]} is outside this model's vocabulary of {e.tokenizer.vocab_size}.",
                             param="tokens", code="invalid_value")
        srv.metrics.request("/detokenize", 200)
        return {"prompt": echo_text(e.tokenizer, body.tokens)}

    # --- models, health, metrics, page ------------------------------------------------------------
    def model_card(e: Engine) -> dict:
        pp, pc = srv.price(e.name)
        return {"id": e.name, "object": "model", "created": srv.started, "owned_by": "glassgpt",
                "context_window": e.context_window, "vision": e.has_vision, "stage": e.stage,
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
    app.add_middleware(BodyLimit, limit=max_body, timeout=read_timeout, server=srv)
    app.add_middleware(Gate, server=srv, bind_port=bind_port, read_timeout=read_timeout)  # added last: runs first, before the body is read
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
          precision: str | None = None, header_timeout: float = 10.0, threads: int | None = None,
          refusal_delay: float = 1.0, max_token_rate: float = 50.0) -> None:
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
    if not refusal_delay >= 0:
        raise ServeError(f"--refusal-delay must be 0 or more seconds, not {refusal_delay}")
    if not max_token_rate >= 0:
        raise ServeError(f"--max-token-rate must be 0 (unpaced) or more tokens a second, not {max_token_rate}")
    if threads is not None and threads < 1:
        raise ServeError(f"--threads must be at least 1, not {threads}")
    names = list(names or [])
    if names and len(names) != len(checkpoints):
        raise ServeError("give one --model-name per --checkpoint, or none")
    # On a small CPU box the engine's matmul threads and the event loop compete for the same
    # cores: beside one busy core, torch on both of 2 cores made a 32-row decode step 3-4x slower
    # than on one (bench/serve_contention.py: OpenMP's threads wait for each other).
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    Engine.own_threads()  # torch's parallel work belongs to the engine threads
    engines = [Engine.from_checkpoint(ck, name=names[i] if names else None, device=device,
                                      max_batch=max_batch, max_queue=max_queue, precision=precision,
                                      max_token_rate=max_token_rate or None, threads=threads or max(1, cores - 1))
               for i, ck in enumerate(checkpoints)]
    store = Store(db, default_rpm=rpm, default_tpm=tpm)
    closed = store.reconcile()  # rows a killed server left running: billed up to its last write
    if closed:
        log.warning("closed %d usage row(s) left running by a previous server (status 'error')", closed)
    app = create_app(engines, store, auth=not no_auth, prices=parse_prices(prices), max_body=max_body, bind_port=port,
                     read_timeout=read_timeout, refusal_delay=refusal_delay)
    log.info("serving %s on http://%s:%d (auth %s)", ", ".join(e.name for e in engines), host, port,
             "off" if no_auth else "on")
    # Everything loaded so far (torch, the models, the web stack) lives as long as the server: out
    # of the collector's sight, a full collection no longer walks it. Under load those walks
    # stalled every thread for 100-300 ms (the GIL is held throughout). What a request allocates
    # is freed by reference counting; rarer young collections (100,000 allocations, not 700)
    # took the last periodic stalls out of time to first token (docs/serving.md).
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 20, 100)
    # timeout_keep_alive closes idle connections between requests, the protocol closes one whose
    # request head is not complete within header_timeout (slowloris), and h11's size limit on an
    # incomplete head (16 KB by default) bounds what it can hold meanwhile.
    from glassgpt.serve.http import protocol

    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_keep_alive=5, http=protocol(header_timeout))
