"""The inference engine: batched KV cache against the model's own forward, sampling, batching."""

import queue
import threading

import pytest
import torch

from glassgpt.serve.engine import Engine, SamplingParams
from glassgpt.serve.errors import ContextLengthError, OverloadedError
from glassgpt.serve.testing import tiny_checkpoint
from glassgpt.train.checkpoint import load_model


@pytest.fixture(scope="module")
def loaded():
    return load_model(tiny_checkpoint())


@pytest.fixture(scope="module")
def engine(loaded):
    model, tok, cfg = loaded
    eng = Engine(model, tok, cfg, name="tiny", max_batch=8, max_queue=64, device="cpu").start()
    yield eng
    eng.stop()


def ids(r, i=0):
    return [t.id for t in r["choices"][i]["tokens"]]


def test_greedy_matches_full_prefix_argmax(engine, loaded):
    model, tok, _ = loaded
    prompt = tok.render_chat([{"role": "user", "content": "def add(a, b):"}])
    r = engine.generate(prompt, SamplingParams(max_tokens=12, temperature=0), timeout=60)
    x = list(prompt)
    with torch.no_grad():  # greedy by definition: the whole prefix again for every token
        for _ in range(12):
            x.append(int(model(torch.tensor([x]))[0, -1].argmax()))
    ref = x[len(prompt):]
    got = ids(r)
    assert got == ref[: len(got)]
    assert r["completion_tokens"] == len(got)


def test_concurrent_requests_share_batches_and_match_sequential(engine, loaded):
    """Different prompt lengths decoded together give what each gives alone (continuous batching)."""
    model, tok, _ = loaded
    prompts = [tok.encode(t) for t in ["import os", "class Foo(object):\n    def", "x = 1\ny =", "for i in range(10):"]]
    solo = [ids(engine.generate(p, SamplingParams(max_tokens=10, temperature=0), timeout=60)) for p in prompts]
    steps0 = engine.steps
    out = [None] * len(prompts)

    def run(i):
        out[i] = ids(engine.generate(prompts[i], SamplingParams(max_tokens=10, temperature=0), timeout=60))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == solo
    # shared forward passes: far fewer decode steps than one per token per request
    assert engine.steps - steps0 < sum(len(s) for s in solo)


def test_seed_reproducible_and_n_choices(engine, loaded):
    _, tok, _ = loaded
    p = tok.render_chat([{"role": "user", "content": "hello"}])
    sp = dict(max_tokens=15, temperature=1.0, top_p=0.9, top_k=50, seed=1234, n=3)
    a = engine.generate(p, SamplingParams(**sp), timeout=60)
    b = engine.generate(p, SamplingParams(**sp), timeout=60)
    assert [c["text"] for c in a["choices"]] == [c["text"] for c in b["choices"]]
    assert len(a["choices"]) == 3
    assert len({tuple(ids(a, i)) for i in range(3)}) > 1  # choices differ from one another
    assert a["completion_tokens"] == sum(len(ids(a, i)) for i in range(3))


def test_stop_sequences_never_in_output(engine, loaded):
    _, tok, _ = loaded
    p = tok.encode("def f(x):\n    return x\n\ndef g(y):\n")
    free = engine.generate(p, SamplingParams(max_tokens=30, temperature=0), timeout=60)["choices"][0]["text"]
    assert len(free) > 4
    stop = free[2:4]  # a string that the greedy continuation certainly contains
    r = engine.generate(p, SamplingParams(max_tokens=30, temperature=0, stop=[stop, "zzzz"]), timeout=60)
    c = r["choices"][0]
    assert stop not in c["text"]
    assert c["finish_reason"] == "stop"
    assert free.startswith(c["text"])


def test_max_tokens_length_and_logprobs(engine, loaded):
    model, tok, _ = loaded
    p = tok.encode("import sys\n")
    r = engine.generate(p, SamplingParams(max_tokens=5, temperature=0, logprobs=True, top_logprobs=3), timeout=60)
    c = r["choices"][0]
    assert c["finish_reason"] in ("length", "stop")
    if c["finish_reason"] == "length":
        assert len(c["tokens"]) == 5
    first = c["tokens"][0]
    with torch.no_grad():
        logits = model(torch.tensor([p]))[0, -1]
    lp = torch.log_softmax(logits.float(), -1)
    assert first.logprob == pytest.approx(float(lp[first.id]), abs=1e-4)
    assert first.top[0][0] == first.id  # greedy picks the most likely token
    assert len(first.top) == 3


def test_echo_prompt_logprobs_match_forward(engine, loaded):
    model, tok, _ = loaded
    p = [tok.bos_id] + tok.encode("import os\nimport sys")
    r = engine.generate(p, SamplingParams(max_tokens=0, echo_logprobs=True), timeout=60)
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([p]))[0].float(), -1)
    got = r["prompt_logprobs"]
    assert got[0].logprob is None and len(got) == len(p)
    for t in range(1, len(p)):
        assert got[t].logprob == pytest.approx(float(lp[t - 1, p[t]]), abs=1e-4)
    assert r["completion_tokens"] == 0


def test_context_window_and_bounded_queue(loaded):
    model, tok, _ = loaded
    eng = Engine(model, tok, name="q", max_batch=1, max_queue=2, device="cpu")
    with pytest.raises(ContextLengthError):
        eng.check(eng.context_window - 2, SamplingParams(max_tokens=5))
    # not started yet: requests pile up in the queue until it is full
    sink = queue.Queue()
    reqs = [eng.submit([tok.bos_id], SamplingParams(max_tokens=2), sink.put) for _ in range(2)]
    with pytest.raises(OverloadedError):
        eng.submit([tok.bos_id], SamplingParams(max_tokens=2), sink.put)
    eng.start()
    for r in reqs:
        assert r.done.wait(30)
    eng.stop()


def test_cancellation_frees_the_slot(loaded):
    model, tok, _ = loaded
    eng = Engine(model, tok, name="c", max_batch=1, device="cpu").start()
    try:
        got = queue.Queue()
        req = eng.submit([tok.bos_id], SamplingParams(max_tokens=50, temperature=1.0), got.put)
        got.get(timeout=30)  # first token arrived
        req.cancel()
        assert req.done.wait(30)
        assert req.completion_tokens < 50
        # the one slot is free again: the next request completes
        r = eng.generate([tok.bos_id], SamplingParams(max_tokens=3, temperature=0), timeout=60)
        assert r["choices"][0]["finish_reason"] in ("length", "stop")
    finally:
        eng.stop()


def test_queue_bound_is_per_owner_and_turns_are_fair(loaded):
    model, tok, _ = loaded
    eng = Engine(model, tok, name="f", max_batch=2, max_queue=3, device="cpu")
    sink = queue.Queue()
    p = SamplingParams(max_tokens=2, n=2)
    big = [eng.submit([tok.bos_id], SamplingParams(max_tokens=2, n=2), sink.put, owner="a") for _ in range(3)]
    with pytest.raises(OverloadedError):  # key a has filled its share of the queue ...
        eng.submit([tok.bos_id], p, sink.put, owner="a")
    small = eng.submit([tok.bos_id], SamplingParams(max_tokens=2), sink.put, owner="b")  # ... key b has not
    # not started: step by hand and record the order in which requests are admitted
    order = []
    real = eng._prefill
    eng._prefill = lambda req: (order.append(req), real(req))[1]
    while not all(r.done.is_set() for r in big + [small]):
        eng._step()
    assert order.index(small) == 1  # right after the request that held the slots, not after all of a's


def test_the_engine_thread_sets_its_own_torch_threads(loaded, monkeypatch):
    """An OpenMP thread count is per thread: the engine sets its own on its thread, and
    own_threads() leaves the caller one thread and returns the count it had."""
    model, tok, cfg = loaded
    seen = []
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (seen.append((threading.current_thread().name, n)), real(n)))
    before = torch.get_num_threads()
    try:
        assert Engine.own_threads() == before and torch.get_num_threads() == 1
    finally:
        real(before)
    eng = Engine(model, tok, cfg, name="threads", max_batch=2, device="cpu", threads=1).start()
    try:
        r = eng.generate(tok.encode("def f():"), SamplingParams(max_tokens=2, temperature=0))
        assert len(r["choices"][0]["tokens"]) == 2
    finally:
        eng.stop()
    assert ("engine-threads", 1) in seen and Engine(model, tok, cfg, name="x", device="cpu").threads == before


@pytest.mark.parametrize("k", [1, 2])
def test_a_smearing_model_decodes_as_its_full_forward(loaded, k):
    """A model with token smearing reads the k tokens before each call's first one from the cache: greedy
    decoding with chunked prefill, a shared prefix (n choices) and other slots decoding around it gives
    the full forward's argmax."""
    import dataclasses

    from glassgpt.model.gpt import build

    base, tok, cfg = loaded
    mcfg = dataclasses.replace(cfg.model, smear=True, smear_tokens=k)
    model = build(mcfg, seed=0)
    model.load_state_dict(base.state_dict(), strict=False)
    with torch.no_grad():
        model.smear.weight.normal_(0, 0.5)
    model.eval()
    scfg = dataclasses.replace(cfg, model=mcfg)
    prompt = tok.encode("def add(a, b):\n    return a + b\n\nclass Foo:\n    pass\n")[:30]
    x = list(prompt)
    with torch.no_grad():
        for _ in range(8):
            x.append(int(model(torch.tensor([x]))[0, -1].argmax()))
    eng = Engine(model, tok, scfg, device="cpu", max_batch=4, prefill_chunk=8, prefill_share=None).start()
    try:
        others = [threading.Thread(target=eng.generate, args=(tok.encode("x = 1"), SamplingParams(max_tokens=20, temperature=0)))
                  for _ in range(2)]
        for t in others:
            t.start()
        r = eng.generate(prompt, SamplingParams(max_tokens=8, temperature=0, n=2), timeout=60)
        for t in others:
            t.join()
    finally:
        eng.stop()
    assert ids(r, 0) == ids(r, 1) == x[len(prompt):][: len(ids(r, 0))] and len(ids(r, 0)) >= 4
