"""Terminal chat: a local checkpoint (through the engine) or a remote OpenAI-compatible server.

Multi-line input: end a line with a backslash to continue it, or wrap a block in lines of
three double quotes. Commands: /reset (forget the conversation), /save PATH (write it as
JSON), /image PATH (attach an image to the next message), /help, /quit. Ctrl-C while the
model answers stops that answer.

Images (`glassgpt chat --image PATH`, or /image): attached to the next user message as
`image_url` parts with a `data:` URL, as the API has them, before the text (the order the
vision runs train on). A local checkpoint encodes them with its vision encoder; a remote
server receives them through its API.
"""

from __future__ import annotations

import json
import queue
import sys
from pathlib import Path
from typing import Callable, Iterator

from glassgpt.config import CHAT_STAGES
from glassgpt.data.chat import DEFAULT_SAMPLING, DEFAULT_SYSTEM
from glassgpt.serve.engine import Engine, SamplingParams, image_parts
from glassgpt.serve.errors import ServeError

HELP = ("commands: /reset  forget the conversation · /save PATH  save it as JSON · /image PATH  attach an image "
        "to the next message · /quit · /help\n"
        "multi-line: end a line with \\ to continue, or wrap text in lines of \"\"\"")


class LocalBackend:
    def __init__(self, engine: Engine):
        self.engine = engine.start()
        self.name = engine.name
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0}

    @property
    def vision(self) -> bool:
        return self.engine.has_vision

    @property
    def stage(self) -> str:
        return self.engine.stage

    def stream(self, messages: list[dict], temperature: float, max_tokens: int | None) -> Iterator[str]:
        tok = self.engine.tokenizer
        rendered, images = image_parts(messages)
        if images and not self.engine.has_vision:
            raise ServeError(f"the model {self.name} has no image input (no vision encoder); send text only")
        prompt = tok.render_chat(rendered, n_image_tokens=self.engine.image_tokens)
        window = self.engine.context_window
        if len(prompt) >= window:
            extra = f", {len(images)} image(s) of {self.engine.image_tokens} tokens each" if images else ""
            raise ServeError(f"the conversation ({len(prompt)} tokens{extra}) fills the {window}-token context; /reset it")
        params = SamplingParams(max_tokens=min(max_tokens or window, window - len(prompt)), temperature=temperature,
                                **(DEFAULT_SAMPLING if self.stage in CHAT_STAGES else {}))
        events: queue.Queue = queue.Queue()
        req = self.engine.submit(prompt, params, events.put, images=images or None)
        try:
            while True:
                ev = events.get()
                if ev.kind == "error":
                    raise ServeError(ev.message)
                if ev.text:
                    yield ev.text
                if ev.kind == "finish":
                    break
        finally:
            req.cancel()
            self.usage["prompt_tokens"] += len(prompt)
            self.usage["completion_tokens"] += req.completion_tokens


class RemoteBackend:
    def __init__(self, base_url: str, api_key: str | None = None, model: str | None = None):
        import openai

        self.client = openai.OpenAI(base_url=base_url, api_key=api_key or "none", max_retries=2)
        self._openai = openai
        try:
            self.name = model or self.client.models.list().data[0].id
        except openai.APIError as e:
            raise ServeError(f"cannot list models at {base_url}: {e}") from None
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0}
        try:
            card = self.client.models.retrieve(self.name)
            self.vision = bool(getattr(card, "vision", True))
            # another vendor's chat model, perhaps: treat an unknown stage as chat-tuned
            self.stage = getattr(card, "stage", None) or "sft"
        except openai.APIError:
            self.vision, self.stage = True, "sft"  # not a glassgpt server, perhaps: let the server answer

    def stream(self, messages: list[dict], temperature: float, max_tokens: int | None) -> Iterator[str]:
        try:
            st = self.client.chat.completions.create(model=self.name, messages=messages, temperature=temperature,
                                                     max_tokens=max_tokens, stream=True,
                                                     stream_options={"include_usage": True})
            with st:
                for chunk in st:
                    if chunk.usage:
                        self.usage["prompt_tokens"] += chunk.usage.prompt_tokens
                        self.usage["completion_tokens"] += chunk.usage.completion_tokens
                    for c in chunk.choices:
                        if c.delta.content:
                            yield c.delta.content
        except self._openai.APIError as e:
            raise ServeError(str(e)) from None


def read_message(read: Callable[[str], str]) -> str | None:
    """One user message from `read` (input-like); None at end of input."""
    try:
        line = read("you> ")
    except EOFError:
        return None
    if line.strip() == '"""':
        lines = []
        while True:
            try:
                nxt = read("... ")
            except EOFError:
                break
            if nxt.strip() == '"""':
                break
            lines.append(nxt)
        return "\n".join(lines)
    lines = [line]
    while lines[-1].endswith("\\"):
        lines[-1] = lines[-1][:-1]
        try:
            lines.append(read("... "))
        except EOFError:
            break
    return "\n".join(lines)


def image_part(path) -> dict:
    """A local image file → an API `image_url` part with a data: URL (validated: a bad
    image is one clear ImageError; an animated GIF or WebP gives its first frame)."""
    from glassgpt.data.images import load_image, to_data_url

    return {"type": "image_url", "image_url": {"url": to_data_url(load_image(path, name=str(path), animated="first"))}}


def run_chat(backend, read: Callable[[str], str] = input, out=None, temperature: float = 0.8,
             max_tokens: int | None = None, system: str | None = None, images: list | None = None) -> list[dict]:
    """The chat loop; returns the conversation at exit. images: paths attached to the first
    user message (as /image PATH would). system: None sends, to a chat-tuned model, the default
    system prompt it was tuned under (data.chat.DEFAULT_SYSTEM, as the page does), to others none;
    "" sends none."""
    from glassgpt.errors import GlassError

    out = out or sys.stdout
    if system is None:
        system = DEFAULT_SYSTEM if backend.stage in CHAT_STAGES else ""
    start = [{"role": "system", "content": system}] if system else []
    messages = list(start)
    pending = [image_part(p) for p in images or []]
    out.write(f"chatting with {backend.name}. {HELP}\n")
    if pending:
        out.write(f"({len(pending)} image(s) attached to your first message)\n")
    while True:
        text = read_message(read)
        if text is None:
            out.write("\n")
            return messages
        cmd = text.strip()
        if not cmd:
            continue
        if cmd in ("/quit", "/exit"):
            return messages
        if cmd == "/help":
            out.write(HELP + "\n")
            continue
        if cmd == "/reset":
            messages = list(start)
            out.write("(conversation reset)\n")
            continue
        if cmd.startswith("/image"):
            path = cmd[6:].strip()
            if not path:
                out.write("usage: /image PATH\n")
            elif not getattr(backend, "vision", True):
                out.write(f"the model {backend.name} has no image input (no vision encoder)\n")
            else:
                try:
                    pending.append(image_part(path))
                    out.write(f"({len(pending)} image(s) attached to your next message)\n")
                except GlassError as e:
                    out.write(f"error: {e}\n")
            continue
        if cmd.startswith("/save"):
            path = cmd[5:].strip()
            if not path:
                out.write("usage: /save PATH\n")
                continue
            try:
                Path(path).write_text(json.dumps({"model": backend.name, "messages": messages}, indent=2))
                out.write(f"(saved {len(messages)} messages to {path})\n")
            except OSError as e:
                out.write(f"cannot save to {path}: {e.strerror or e}\n")
            continue
        if pending:
            messages.append({"role": "user", "content": pending + [{"type": "text", "text": text}]})
        else:
            messages.append({"role": "user", "content": text})
        answer = ""
        out.write(f"{backend.name}> ")
        out.flush()
        try:
            for piece in backend.stream(messages, temperature, max_tokens):
                answer += piece
                out.write(piece)
                out.flush()
        except KeyboardInterrupt:
            out.write(" (stopped)")
        except ServeError as e:
            out.write(f"\nerror: {e}\n")
            messages.pop()  # the images stay attached for the next try
            continue
        pending = []
        out.write("\n")
        messages.append({"role": "assistant", "content": answer})


def chat(checkpoint: str | None = None, base_url: str | None = None, api_key: str | None = None,
         model: str | None = None, temperature: float = 0.8, max_tokens: int | None = None,
         system: str | None = None, device: str | None = None, images: list | None = None) -> None:
    if bool(checkpoint) == bool(base_url):
        raise ServeError("pass either --checkpoint DIR (local) or --base-url URL (a running server)")
    for p in images or []:  # a bad image is one clear line before any model loads
        image_part(p)
    if checkpoint:
        engine = Engine.from_checkpoint(checkpoint, name=model, device=device, max_batch=1)
        if images and not engine.has_vision:
            raise ServeError(f"{checkpoint} has no image input (a text-only model, no vision encoder); "
                             "drop --image or use a vision run")
        backend = LocalBackend(engine)
    else:
        backend = RemoteBackend(base_url, api_key, model)
        if images and not backend.vision:
            raise ServeError(f"the model {backend.name} at {base_url} has no image input; drop --image")
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    run_chat(backend, temperature=temperature, max_tokens=max_tokens, system=system, images=images)
    if isinstance(backend, LocalBackend):
        backend.engine.stop()
