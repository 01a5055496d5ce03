"""Image input, measured on a finished run: held-out accuracy per task and per question type,
a grid of held-out images with the model's answers, and one question about images.

Accuracy is scored by teacher forcing (glassgpt.train.sources.token_scores, the same scoring
as the training evals): a greedy decode returns exactly the answer iff the argmax at every
answer position is right. `greedy=True` instead asks each question through the serving
engine and compares the text, the registry evals' rule (slower, and the same number up to
ties). Held-out samples come from the one sampler, glassgpt.data.images.heldout_samples.
"""

from __future__ import annotations

from pathlib import Path

from glassgpt.data import images as img_mod
from glassgpt.data.images import Sample
from glassgpt.evals.completion_fns.base import CompletionFn, CompletionResult
from glassgpt.evals.elsuite.utils import first_completion
from glassgpt.evals.elsuite.vision import heldout_samples
from glassgpt.model.vision import VisionError, check_fits, n_image_tokens
from glassgpt.serve.engine import Engine, SamplingParams, render_messages
from glassgpt.train.sources import EVAL_TASKS, token_scores

__all__ = ["heldout_table_for_run", "by_type_for_run", "render_grid", "ask_run"]


def load(run, device: str = "cpu"):
    """(model, tokenizer, config) of a vision run; VisionError for a text-only run."""
    from glassgpt.train.checkpoint import load_model

    model, tok, cfg = load_model(run, device=device)
    if getattr(model, "vision", None) is None:
        raise VisionError(f"{run} is a text-only run (no vision encoder)")
    return model, tok, cfg


def engine_for(model, tok, device: str = "cpu", max_batch: int = 1):
    return Engine(model, tok, device=device, max_batch=max_batch)


def ask(engine, images, question: str, max_new_tokens: int = 16) -> str:
    """One chat turn with images, greedy, through the serving engine; the assistant's text."""
    model, tok = engine.model, engine.tokenizer
    if images and getattr(model, "vision", None) is None:
        raise VisionError("this model has no image input (no vision encoder); send text only or use a vision run")
    parts = [{"type": "image"} for _ in images] + [{"type": "text", "text": question}]
    ids = tok.render_chat([{"role": "user", "content": parts}], True, n_image_tokens(model))
    check_fits(model, len(ids))
    params = SamplingParams(max_tokens=min(max_new_tokens, model.cfg.seq_len - len(ids)), temperature=0.0)
    # generate() needs the engine's thread in this version of the engine. Callers that ask from
    # several threads start the engine first (starting and stopping here would race).
    started = not engine.alive
    if started:
        engine.start()
    try:
        out = engine.generate(ids, params, images=list(images) or None)
    finally:
        if started:
            engine.stop()
    return out["choices"][0]["text"].strip()


def ask_messages(engine, messages: list[dict], max_new_tokens: int = 16) -> str:
    """A whole chat prompt answered greedily through the serving engine; the assistant's text."""
    model = engine.model
    ids, images = render_messages(model, engine.tokenizer, messages)
    params = SamplingParams(max_tokens=min(max_new_tokens, model.cfg.seq_len - len(ids)), temperature=0.0)
    started = not engine.alive
    if started:
        engine.start()
    try:
        out = engine.generate(ids, params, images=images or None)
    finally:
        if started:
            engine.stop()
    return out["choices"][0]["text"].strip()


def ask_run(run, images: list[str], question: str, max_new_tokens: int = 16) -> str:
    """`glassgpt vision ask`: one question about one or more images (paths or data: URLs)."""
    model, tok, _ = load(run)
    return ask(engine_for(model, tok), images, question, max_new_tokens)


def question_type(s: Sample) -> str:
    """A coarse kind of question, for the per-type breakdown."""
    q = s.question
    if s.task == "text":
        return f"text {len(s.answer)} chars"
    for key, name in (("How many", "count"), ("What colour", "colour"), ("What shape", "shape"),
                      ("further left", "left/right"), ("further right", "left/right"),
                      ("higher", "above/below"), ("lower", "above/below"),
                      ("Which bar", "largest bar"), ("value of bar", "bar value"), ("Which point", "highest point")):
        if key in q:
            return name
    return s.task


def heldout_scores(model, tok, cfg, n: int = 300, tasks=EVAL_TASKS, batch: int = 64) -> dict:
    """{task: [(sample, token_scores row)]} over the held-out samples, in one pass."""
    out = {}
    for t in tasks:
        samples = img_mod.heldout_samples(t, n, cfg.train.seed)
        rows = []
        for i in range(0, len(samples), batch):
            chunk = samples[i : i + batch]
            rows += zip(chunk, token_scores(model, tok, chunk, cfg.vision))
        out[t] = rows
    return out


def heldout_table_for_run(run, n: int = 300, greedy: bool = False) -> dict:
    """{task: {"accuracy", "n"}}: held-out exact match per task (n is what was scored: digits has 300)."""
    if greedy:
        return accuracy_table(run, n)
    scores = heldout_scores(*load(run), n=n)
    return {t: {"accuracy": sum(r[0] for _, r in rows) / max(1, len(rows)), "n": len(rows)} for t, rows in scores.items()}


def by_type_for_run(run, n: int = 300) -> dict:
    """{"task: type": {"accuracy", "token_accuracy", "answer_loss", "n"}} by teacher forcing."""
    groups: dict[str, list[tuple[bool, float, float]]] = {}
    for t, rows in heldout_scores(*load(run), n=n).items():
        for s, r in rows:
            groups.setdefault(f"{t}: {question_type(s)}", []).append(r)
    return {k: {"accuracy": sum(r[0] for r in v) / len(v), "token_accuracy": sum(r[1] for r in v) / len(v),
                "answer_loss": sum(r[2] for r in v) / len(v), "n": len(v)} for k, v in sorted(groups.items())}


def render_grid(run, out_png, per_task: int = 6, tasks=EVAL_TASKS) -> Path:
    """A PNG grid of held-out images with the question, the model's greedy answer and the
    truth (green when right, red when wrong)."""
    from PIL import Image, ImageDraw

    model, tok, cfg = load(run)
    engine = engine_for(model, tok).start()
    cell, text_h = 128, 40
    grid = Image.new("RGB", (cell * per_task, (cell + text_h) * len(tasks)), (255, 255, 255))
    d = ImageDraw.Draw(grid)
    font = img_mod._font(None, 10)
    try:
        for r, t in enumerate(tasks):
            for c, s in enumerate(img_mod.heldout_samples(t, per_task, cfg.train.seed)):
                got = ask(engine, [s.image], s.question)
                im = s.image.copy()
                scale = cell / max(im.size)
                im = im.resize((max(1, round(im.size[0] * scale)), max(1, round(im.size[1] * scale))),
                               Image.NEAREST if scale >= 4 else Image.BILINEAR)
                x0, y0 = c * cell, r * (cell + text_h)
                grid.paste(im, (x0 + (cell - im.size[0]) // 2, y0))
                d.text((x0 + 2, y0 + cell + 1), s.question[:26], fill=(0, 0, 0), font=font)
                d.text((x0 + 2, y0 + cell + 13), f"model: {got[:18]}", fill=(0, 140, 0) if got == s.answer else (200, 0, 0), font=font)
                d.text((x0 + 2, y0 + cell + 25), f"truth: {s.answer}", fill=(90, 90, 90), font=font)
    finally:
        engine.stop()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_png.with_name(out_png.name + ".tmp.png")
    grid.save(tmp)
    tmp.replace(out_png)
    return out_png


class VisionLocalFn(CompletionFn):
    """A local vision run as a completion function (chat prompts with image parts)."""

    def __init__(self, run_dir, max_tokens: int = 16, name: str | None = None):
        self.model, self.tok, self.cfg = load(run_dir)
        # started once: eval runners call this from several threads, and the engine batches them
        self.engine = engine_for(self.model, self.tok, max_batch=16).start()
        self.name = self.cache_id = name or f"vision:{run_dir}"
        self.max_tokens = max_tokens

    def __call__(self, prompt, **kwargs) -> CompletionResult:
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        # the whole prompt as the API renders it: a system message and earlier turns are kept
        # (the chat model's vision stage was trained under its system prompt)
        text = ask_messages(self.engine, prompt, kwargs.get("max_tokens") or self.max_tokens)
        return CompletionResult([text], prompt=prompt)


def accuracy_table(run_dir, n: int = 200) -> dict:
    """{task: {"accuracy", "n"}}: every vision eval against a local run, through the registry
    classes' scoring rule (greedy answers from the serving engine)."""
    fn = VisionLocalFn(run_dir)
    seed = fn.cfg.train.seed
    out = {}
    try:
        for task in ("digits", "shapes", "text", "charts"):
            samples = heldout_samples(task, n, seed)
            ok = [first_completion(fn(s["input"])).strip() == s["ideal"] for s in samples]
            out[task] = {"accuracy": sum(ok) / max(1, len(ok)), "n": len(samples)}
    finally:
        fn.engine.stop()
    return out

