"""Completion functions and the name -> function factory used by the CLI and runner.

Names:
    scripted | scripted:echo | scripted:const:TEXT | scripted:file:PATH | dummy
    local:RUN_DIR  (or an existing run directory)     a glassgpt checkpoint, in-process
    completions:MODEL                                  an OpenAI-compatible /v1/completions model
    openai:MODEL | chat:MODEL | any other name         an OpenAI-compatible chat model
    a key in a registry's completion_fns/*.yaml        with a glassgpt class
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from ..errors import EvalError
from .base import CompletionFn, CompletionResult, ScriptedCompletionFn, load_scripted, prompt_key
from .cache import CachedCompletionFn, ResponseCache
from .ratelimit import RateLimiter

__all__ = ["CompletionFn", "CompletionResult", "ScriptedCompletionFn", "CachedCompletionFn", "ResponseCache",
           "RateLimiter", "make_completion_fn", "parse_kv", "prompt_key"]


def _convert(v: str):
    if not isinstance(v, str):
        return v
    low = v.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for t in (int, float):
        try:
            return t(v)
        except ValueError:
            pass
    return v


def parse_kv(text: str) -> dict:
    """'a=1,b=x' -> {'a': 1, 'b': 'x'} (the reference's --completion_args format)."""
    out = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise EvalError(f"bad key=value pair '{part}' (expected like 'temperature=0,max_tokens=64')")
        k, v = part.split("=", 1)
        out[k.strip()] = _convert(v.strip())
    return out


def _has_vision(run_dir) -> bool:
    import yaml

    cfg_path = Path(run_dir) / "config.yaml"
    try:
        cfg = yaml.safe_load(cfg_path.read_text()) if cfg_path.exists() else {}
    except yaml.YAMLError:
        return False
    return bool(((cfg or {}).get("vision") or {}).get("enabled"))


def make_completion_fn(name: str, registry=None, base_url: Optional[str] = None, limiter: Optional[RateLimiter] = None,
                       cache_dir: Optional[os.PathLike] = None, **kwargs) -> CompletionFn:
    name = name.strip()
    precision = kwargs.pop("precision", None)  # local models only: an endpoint chose its own
    fn: CompletionFn
    cacheable = True
    if name == "dummy":
        fn = ScriptedCompletionFn(default="This is a dummy response.", name="dummy", delay=float(kwargs.get("delay", 0)))
        cacheable = False
    elif name == "scripted" or name.startswith("scripted:"):
        fn = load_scripted(name, **kwargs)
        cacheable = False
    elif name.startswith("local:") or (Path(name).is_dir() and not name.startswith(("openai:", "chat:", "completions:"))):
        from .local import LocalModelFn

        run_dir = name.split(":", 1)[1] if name.startswith("local:") else name
        if not Path(run_dir).exists():
            raise EvalError(f"local run directory not found: {run_dir}")
        if _has_vision(run_dir):  # image-chat prompts need the run's encoder
            from ..vision import VisionLocalFn

            fn = VisionLocalFn(run_dir, **{k: v for k, v in kwargs.items() if k in ("max_tokens", "name")})
        else:
            fn = LocalModelFn.from_run_dir(run_dir, precision=precision, **kwargs)
    elif registry is not None and registry.get_completion_fn_spec(name) is not None:
        spec = registry.get_completion_fn_spec(name)
        from ..registry import load_class

        cls = load_class(str(spec.get("class", "")))
        fn = cls(**{**(spec.get("args") or {}), **kwargs})
    else:
        from .openai_compat import OpenAICompatFn

        chat = True
        model = name
        for prefix, is_chat in (("openai:", True), ("chat:", True), ("completions:", False)):
            if name.startswith(prefix):
                model, chat = name[len(prefix):], is_chat
        fn = OpenAICompatFn(model, base_url=base_url, chat=chat, limiter=limiter, **kwargs)
    if cache_dir is not None and cacheable:
        fn = CachedCompletionFn(fn, ResponseCache(cache_dir))
    return fn
