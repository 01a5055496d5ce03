"""Terminal chat: a local checkpoint (through the engine) or a remote OpenAI-compatible server.

Multi-line input: end a line with a backslash to continue it, or wrap a block in lines of
three double quotes. Commands: /reset (forget the conversation), /save PATH (write it as
JSON), /help, /quit. Ctrl-C while the model answers stops that answer.
"""

from __future__ import annotations

import json
import queue
import sys
from pathlib import Path
from typing import Callable, Iterator

from glassgpt.serve.engine import Engine, SamplingParams
from glassgpt.serve.errors import ServeError

HELP = ("commands: /reset  forget the conversation · /save PATH  save it as JSON · /quit · /help\n"
        "multi-line: end a line with \\ to continue, or wrap text in lines of \"\"\"")


class LocalBackend:
    def __init__(self, engine: Engine):
        self.engine = engine.start()
        self.name = engine.name
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0}

    def stream(self, messages: list[dict], temperature: float, max_tokens: int | None) -> Iterator[str]:
        tok = self.engine.tokenizer
        prompt = tok.render_chat(messages)
        window = self.engine.context_window
        if len(prompt) >= window:
            raise ServeError(f"the conversation ({len(prompt)} tokens) fills the {window}-token context; /reset it")
        params = SamplingParams(max_tokens=min(max_tokens or window, window - len(prompt)), temperature=temperature)
        events: queue.Queue = queue.Queue()
        req = self.engine.submit(prompt, params, events.put)
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


def run_chat(backend, read: Callable[[str], str] = input, out=None, temperature: float = 0.8,
             max_tokens: int | None = None, system: str | None = None) -> list[dict]:
    """The chat loop; returns the conversation at exit."""
    out = out or sys.stdout
    start = [{"role": "system", "content": system}] if system else []
    messages = list(start)
    out.write(f"chatting with {backend.name}. {HELP}\n")
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
            messages.pop()
            continue
        out.write("\n")
        messages.append({"role": "assistant", "content": answer})


def chat(checkpoint: str | None = None, base_url: str | None = None, api_key: str | None = None,
         model: str | None = None, temperature: float = 0.8, max_tokens: int | None = None,
         system: str | None = None, device: str | None = None) -> None:
    if bool(checkpoint) == bool(base_url):
        raise ServeError("pass either --checkpoint DIR (local) or --base-url URL (a running server)")
    if checkpoint:
        backend = LocalBackend(Engine.from_checkpoint(checkpoint, name=model, device=device, max_batch=1))
    else:
        backend = RemoteBackend(base_url, api_key, model)
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    run_chat(backend, temperature=temperature, max_tokens=max_tokens, system=system)
    if isinstance(backend, LocalBackend):
        backend.engine.stop()
