"""Records what the reference `oaieval` (openai/evals, the `evals` package from PyPI) sends for a
completion model, against the stub endpoint of the tests; writes tests/evals_data/reference_routing/
reference.json (tests/test_evals_routing.py compares glassgpt's requests with it).

Run by hand, not by the tests (they read the JSON it wrote):
    pip install --no-deps --target /tmp/evalsref evals==3.0.1.post1 blobfile lz4 backoff
    OPENAI_API_KEY=x PYTHONPATH=/tmp/evalsref:tests python bench/evals_routing_reference.py
"""

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent / "tests" / "evals_data" / "reference_routing"
MODELS = ["gpt-3.5-turbo-instruct", "glassgpt-tiny", "davinci-002", "gpt-4o-mini"]
NAMES = ["gpt-3.5-turbo-instruct", "gpt-3.5-turbo-instruct-0914", "gpt-4-base", "gpt-3.5-turbo", "gpt-4",
         "gpt-4-0613", "gpt-3.5-turbo-16k", "gpt-4o-mini", "glassgpt-tiny", "davinci-002", "unlisted-model"]
EVALS = ["test-match", "logic-fact"]


def reply(prompt):
    """The stub's answer, a pure function of the prompt, so verdicts can be compared too."""
    text = prompt if isinstance(prompt, str) else json.dumps(prompt)
    return "ABCDE"[len(text) % 5]


def main():
    import os

    import evals.registry
    from evals.cli import oaieval
    from evals_stub_server import Stub

    with Stub(reply=reply, models=MODELS) as stub:
        os.environ["OPENAI_BASE_URL"] = stub.url
        evals.registry.client = evals.registry.OpenAI(base_url=stub.url)  # the module's client is made at import
        reg = evals.registry.Registry()
        routing = {}
        for name in NAMES:
            try:
                fn = reg.make_completion_fn(name)
                routing[name] = "chat" if type(fn).__name__ == "OpenAIChatCompletionFn" else "completions"
            except ValueError:
                routing[name] = "error"
        runs = {}
        for ev in EVALS:
            stub.requests.clear()
            rec = Path(f"/tmp/reference-{ev}.jsonl")
            rec.unlink(missing_ok=True)
            sys.argv = ["oaieval", "gpt-3.5-turbo-instruct", ev, "--record_path", str(rec), "--max_samples", "8"]
            oaieval.main()
            lines = [json.loads(x) for x in rec.read_text().splitlines() if x.strip()]
            final = next(x["final_report"] for x in lines if "final_report" in x)
            sent = sorted((p, b.get("prompt") if "prompt" in b else b.get("messages")) for m, p, b in stub.requests
                          if m == "POST")
            runs[ev] = {"requests": [{"path": p, "prompt": q} for p, q in sent], "final_report": final}
    out = {"evals_version": __import__("importlib.metadata").metadata.version("evals"), "models_listed": MODELS,
           "routing": routing, "runs": runs}
    (HERE / "reference.json").write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
