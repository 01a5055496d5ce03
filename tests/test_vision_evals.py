"""The vision evals in the registry: held-out samples with image parts, exact-match scoring."""

import pytest

pytest.importorskip("PIL")

from glassgpt.data import images as I  # noqa: E402
from glassgpt.evals import Registry  # noqa: E402
from glassgpt.evals.completion_fns.base import CompletionFn, CompletionResult  # noqa: E402
from glassgpt.evals.elsuite import vision as VE  # noqa: E402
from glassgpt.evals.runner import run_eval  # noqa: E402


class Fn(CompletionFn):
    """(ScriptedCompletionFn renders prompts as text, which content-part lists do not support yet.)"""

    name = cache_id = "vision-test"

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, prompt, **kw):
        return CompletionResult([self.fn(prompt, **kw)], prompt=prompt)


def test_registry_eval_sends_image_parts(tmp_path):
    truth = {I.decode_data_url(s["input"][0]["content"][0]["image_url"]["url"]).tobytes(): s["ideal"]
             for s in VE.heldout_samples("digits", 300)}
    seen = []

    def answer(prompt, **kw):
        part = prompt[0]["content"][0]
        seen.append(part)
        img = I.decode_data_url(part["image_url"]["url"])  # a real image travels in the prompt
        return " " + truth[img.tobytes()] + " "  # right answers, surrounding space stripped

    res = run_eval("glassgpt-vision-digits", [Fn(answer)], Registry(), record_path=tmp_path / "r.jsonl",
                   show_progress=False, max_samples=20)
    assert res.final_report["accuracy"] == 1.0 and len(seen) == 20
    assert seen[0]["type"] == "image_url" and seen[0]["image_url"]["url"].startswith("data:image/png;base64,")
    wrong = run_eval("glassgpt-vision-digits", [Fn(lambda p, **k: "x")], Registry(), record_path=tmp_path / "w.jsonl",
                     show_progress=False, max_samples=5)
    assert wrong.final_report["accuracy"] == 0.0


def test_all_vision_evals_are_registered():
    names = Registry().names() if hasattr(Registry(), "names") else []
    for task in ("digits", "shapes", "text", "charts"):
        assert any(f"glassgpt-vision-{task}" in str(n) for n in names)
        assert VE.heldout_samples(task, 3)[0]["ideal"]
