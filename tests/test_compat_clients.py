"""Real third-party clients against a `glassgpt serve` subprocess (the tiny model, keys on):
lm-evaluation-harness `local-completions` (loglikelihood, rolling and generate tasks on local
JSONL data this test writes) and LangChain `ChatOpenAI`. Slow; skipped without the `compat`
extra (pip install -e '.[compat]').
"""

import json
import math
import os
import subprocess
import sys

import httpx
import pytest

from glassgpt.serve.testing import free_port, wait_healthy

pytestmark = pytest.mark.slow

QUESTIONS = [
    {"question": "import", "choices": ["os", "the", "1 + 1"], "answer": 0},
    {"question": "def main():\n   ", "choices": [" return", " zebra", "))"], "answer": 0},
    {"question": "for i in", "choices": [" range(10):", " banana", " ü😀"], "answer": 0},
    {"question": "Grüße aus", "choices": [" Köln", " 😀😀", " x"], "answer": 0},
]
TEXTS = [{"text": "import os\nimport sys\n\ndef main():\n    return 0\n"}, {"text": "ü😀 Grüße, 世界 — x = 1"},
         {"text": "class A:\n    pass\n"}]
PROMPTS = [{"question": "import", "answer": " os"}, {"question": "def f(x):\n", "answer": "    return x"}]



@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from glassgpt.serve.store import Store
    from glassgpt.serve.testing import tiny_checkpoint

    run = tiny_checkpoint()
    db = tmp_path_factory.mktemp("clients") / "serve.db"
    key, _ = Store(db).create_key("clients")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "glassgpt.cli", "serve", "--checkpoint", str(run), "--model-name",
                             "tiny", "--port", str(port), "--db", str(db)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        yield {"url": url, "key": key, "run": run}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def forward_logprobs(run, ids: list[int]) -> list[float]:
    """log p(ids[t] | ids[:t]) for t >= 1 from one plain in-process forward pass."""
    import torch

    from glassgpt.serve.engine import Engine

    model = Engine.from_checkpoint(run, device="cpu").model
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([ids])).float()[0], dim=-1)
    return [float(lp[t - 1, ids[t]]) for t in range(1, len(ids))]


def pair_logprob(run, tok, ctx, cont, prefix=()):
    """What lm-eval asks for a (context, continuation): trailing spaces of the context moved to
    the continuation, the context's tokens, then the whole text's tokens after as many."""
    n = len(ctx) - len(ctx.rstrip())
    if n:
        ctx, cont = ctx[:-n], ctx[-n:] + cont
    whole, head = tok.encode(ctx + cont), tok.encode(ctx)
    ids = list(prefix) + head + whole[len(head):]
    return sum(forward_logprobs(run, ids)[len(prefix) + len(head) - 1:])


def write_tasks(d):
    for name, rows in (("mc", QUESTIONS), ("roll", TEXTS), ("gen", PROMPTS)):
        (d / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    common = "dataset_path: json\ntest_split: test\n"
    (d / "glass_mc.yaml").write_text(
        f"task: glass_mc\n{common}dataset_kwargs:\n  data_files:\n    test: {d / 'mc.jsonl'}\n"
        "output_type: multiple_choice\ndoc_to_text: '{{question}}'\ndoc_to_choice: '{{choices}}'\n"
        "doc_to_target: '{{answer}}'\ntarget_delimiter: ''\nmetric_list:\n  - metric: acc\n")
    (d / "glass_roll.yaml").write_text(
        f"task: glass_roll\n{common}dataset_kwargs:\n  data_files:\n    test: {d / 'roll.jsonl'}\n"
        "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\n")
    (d / "glass_gen.yaml").write_text(
        f"task: glass_gen\n{common}dataset_kwargs:\n  data_files:\n    test: {d / 'gen.jsonl'}\n"
        "output_type: generate_until\ndoc_to_text: '{{question}}'\ndoc_to_target: '{{answer}}'\n"
        "generation_kwargs:\n  until: ['\\n\\n']\n  max_gen_toks: 6\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n")


def run_lm_eval(server, tmp_path, monkeypatch, tasks, **model_args):
    lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is not installed: pip install -e '.[compat]'")
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("OPENAI_API_KEY", server["key"])  # local-completions sends it as the bearer token
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_tasks(tmp_path)
    args = {"model": "tiny", "base_url": server["url"] + "/v1/completions", "num_concurrent": 1, "max_retries": 1,
            "max_length": 256, "auth_token": server["key"], **model_args}
    return lm_eval.simple_evaluate(model="local-completions", model_args=args, tasks=tasks, log_samples=True,
                                   task_manager=TaskManager(include_path=str(tmp_path)))


def test_lm_eval_remote_tokenizer_all_three_kinds(server, tmp_path, monkeypatch):
    """Tokenizer auto-detected as the server's own (/tokenizer_info, /tokenize); every request
    is token ids, so the numbers are those of a forward pass over exactly those ids."""
    from glassgpt.data.tokenizer import Tokenizer

    out = run_lm_eval(server, tmp_path, monkeypatch, ["glass_mc", "glass_roll", "glass_gen"])
    tok = Tokenizer.load(server["run"] / "tokenizer.json")
    mc = out["samples"]["glass_mc"]
    assert len(mc) == len(QUESTIONS) and 0 <= out["results"]["glass_mc"]["acc,none"] <= 1
    for s in mc:  # loglikelihood: context and choice tokenized apart, no BOS (none asked for)
        for (ctx, cont), resp in zip(s["arguments"], s["resps"]):
            assert resp[0][0] == pytest.approx(pair_logprob(server["run"], tok, ctx, cont), abs=1e-3)
    roll = out["samples"]["glass_roll"]
    for s in roll:  # rolling: one window from <|bos|> (the server's BOS, found by name)
        text = s["arguments"][0][0]
        want = sum(forward_logprobs(server["run"], [tok.bos_id] + tok.encode(text)))
        assert s["resps"][0][0] == pytest.approx(want, abs=1e-3)
    assert math.isfinite(out["results"]["glass_roll"]["word_perplexity,none"])
    gen = out["samples"]["glass_gen"]
    assert len(gen) == len(PROMPTS) and all(isinstance(s["resps"][0][0], str) for s in gen)
    assert 0 <= out["results"]["glass_gen"]["exact_match,none"] <= 1


def test_lm_eval_with_the_exported_tokenizer_and_bos(server, tmp_path, monkeypatch):
    """tokenizer=RUN_DIR (tokenizer.json + tokenizer_config.json) with add_bos_token: the
    exported tokenizer puts <|bos|> first, as glassgpt's documents start."""
    from glassgpt.data.tokenizer import Tokenizer

    out = run_lm_eval(server, tmp_path, monkeypatch, ["glass_mc"], tokenizer_backend="huggingface",
                      tokenizer=str(server["run"]), add_bos_token=True)
    tok = Tokenizer.load(server["run"] / "tokenizer.json")
    for s in out["samples"]["glass_mc"]:
        for (ctx, cont), resp in zip(s["arguments"], s["resps"]):
            want = pair_logprob(server["run"], tok, ctx, cont, prefix=[tok.bos_id])
            assert resp[0][0] == pytest.approx(want, abs=1e-3)


def test_langchain_chat_two_user_turns(server):
    pytest.importorskip("langchain_openai", reason="langchain-openai is not installed: pip install -e '.[compat]'")
    from langchain_core.messages import HumanMessage, SystemMessage
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model="tiny", base_url=server["url"] + "/v1", api_key=server["key"], max_tokens=8, temperature=0,
                     max_retries=0)
    msgs = [SystemMessage("be brief"), HumanMessage("hello"), HumanMessage("and again")]
    r = llm.invoke(msgs)
    assert isinstance(r.content, str) and r.response_metadata["finish_reason"] in ("stop", "length")
    counted = httpx.post(server["url"] + "/tokenize", headers={"authorization": f"Bearer {server['key']}"},
                         json={"model": "tiny", "messages": [{"role": "system", "content": "be brief"},
                                                             {"role": "user", "content": "hello"},
                                                             {"role": "user", "content": "and again"}]}).json()
    assert r.usage_metadata["input_tokens"] == counted["count"]
    streamed = "".join(c.content for c in llm.stream(msgs))
    assert streamed == r.content
