"""One inference path: greedy ids from the engine (alone, batched, n choices) and from the
evals' local completion function equal the ids recorded from the decoders they replaced
(GPT.generate, the engine's own copy of the blocks, local.py's full-prefix recompute), and
equal the definition of greedy: argmax of a full forward over the whole prefix, per token."""

import queue

import pytest
import torch

from glassgpt.config import ModelConfig
from glassgpt.data.tokenizer import Tokenizer
from glassgpt.evals.completion_fns.local import LocalModelFn
from glassgpt.model.gpt import build
from glassgpt.serve.engine import Engine, SamplingParams

from conftest import naive_greedy

TEXTS = ["hello world, the quick brown fox. " * 20, "def f(x):\n    return x + 1\n" * 20]
WORDS = ["hello", "def f(x):", "the quick brown fox jumps", "x"]
# Recorded from the previous decoders (GPT.generate, Engine._forward and local.py agreed).
PROMPTS = [[0, 293, 87], [0, 297, 266, 268, 269], [0, 283, 289, 274, 299, 294, 229, 82, 93, 85, 88, 91], [0, 96]]
GREEDY = [[2, 37, 37, 37, 37, 37, 37, 37, 37, 37, 37, 37],
          [227, 164, 164, 164, 164, 164, 164, 164, 164, 164, 164, 164],
          [181, 122, 91, 181, 122, 91, 181, 91, 181, 71, 143, 96],
          [36, 143, 73, 115, 108, 248, 250, 9, 236, 159, 54, 143]]


@pytest.fixture(scope="module")
def tiny():
    tok = Tokenizer.train(TEXTS, vocab_size=300)
    cfg = ModelConfig(depth=2, aspect=32, head_dim=16, kv_groups=2, seq_len=64, vocab_size=tok.vocab_size)
    model = build(cfg, seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # init zeroes the residual projections; random weights exercise every path
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval(), tok


def ids(choice):
    return [t.id for t in choice["tokens"]]


def test_fixture_prompts_and_naive_greedy_unchanged(tiny):
    model, tok = tiny
    assert [[tok.bos_id] + tok.encode(w) for w in WORDS] == PROMPTS
    assert [naive_greedy(model, p, 12) for p in PROMPTS] == GREEDY


def test_engine_greedy_alone_matches_recorded(tiny):
    model, tok = tiny
    eng = Engine(model, tok, device="cpu", max_batch=1)  # never started: steps inline
    got = [ids(eng.generate(p, SamplingParams(max_tokens=12, temperature=0.0))["choices"][0]) for p in PROMPTS]
    assert got == GREEDY
    assert not eng.alive


def test_engine_greedy_batched_with_n_choices_matches_recorded(tiny):
    model, tok = tiny
    eng = Engine(model, tok, device="cpu", max_batch=8)
    events = [queue.Queue() for _ in PROMPTS]
    # queued before the thread starts, so the first step admits all of them into one batch
    reqs = [eng.submit(p, SamplingParams(max_tokens=12, temperature=0.0, n=2 if i == 1 else 1), events[i].put)
            for i, p in enumerate(PROMPTS)]
    eng.start()
    try:
        for r in reqs:
            assert r.done.wait(60)
    finally:
        eng.stop()
    for i, r in enumerate(reqs):
        got = [[] for _ in range(r.params.n)]
        while not events[i].empty():
            ev = events[i].get()
            if ev.kind == "token":
                got[ev.index].append(ev.token.id)
        assert got == [GREEDY[i]] * r.params.n
    assert eng.steps < 12 * len(PROMPTS)  # the requests shared decode steps


def test_local_completion_fn_greedy_matches_recorded(tiny):
    model, tok = tiny
    fn = LocalModelFn(model, tok, max_tokens=12, chat=False)
    assert [fn(w, max_tokens=12).get_completions()[0] for w in WORDS] == [tok.decode(g) for g in GREEDY]


def test_engine_fp32_logprobs_equal_a_plain_full_forward(tiny):
    model, tok = tiny
    eng = Engine(model, tok, device="cpu", max_batch=2)
    p = PROMPTS[2]
    r = eng.generate(p, SamplingParams(max_tokens=8, temperature=0.0, logprobs=True, echo_logprobs=True))
    gen = ids(r["choices"][0])
    seq = p + gen
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([seq]))[0].float(), -1)
    want = [float(lp[t - 1, seq[t]]) for t in range(1, len(seq))]
    got = [t.logprob for t in r["prompt_logprobs"][1:]] + [t.logprob for t in r["choices"][0]["tokens"]]
    assert got == pytest.approx(want, abs=1e-5)


def test_one_off_image_question_without_start(tmp_path):
    """The blocking one-off call a vision question makes: no start(), one slot, images as PIL
    images; equals greedy by full forward with the same image embeddings spliced in."""
    pytest.importorskip("PIL")
    from glassgpt.config import VisionConfig
    from glassgpt.data import images as I
    from glassgpt.model import vision as V

    tok = Tokenizer.train(["Which digit is this? What shape is it? 0 1 2 3 4 5 6 7 8 9"] * 50, 300)
    cfg = ModelConfig(depth=2, aspect=32, head_dim=32, seq_len=96, vocab_size=tok.vocab_size, image_token_id=tok.image_id)
    model = build(cfg, seed=0)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    V.attach(model, VisionConfig(enabled=True, image_size=32, patch_size=8, width=64, depth=2, head_dim=32, shuffle=2), seed=0)
    model.eval()
    s = I.shapes(0, "heldout", 0)
    prompt = tok.render_chat(s.messages(with_answer=False), True, V.n_image_tokens(model))
    eng = Engine(model, tok, device="cpu", max_batch=1)
    assert eng.cache is None  # nothing allocated until a request arrives
    r = eng.generate(prompt, SamplingParams(max_tokens=10, temperature=0.0), images=[s.image])
    assert not eng.alive and eng.cache.k.size(1) == 1
    emb = V.encode_images(model, [s.image])
    x = list(prompt)
    with torch.no_grad():
        for _ in range(10):
            x.append(int(model(torch.tensor([x]), image_embeds=emb)[0, -1].argmax()))
    want = x[len(prompt):]
    ends = [i for i, t in enumerate(want) if t in (tok.special["<|assistant_end|>"], tok.bos_id)]
    c = r["choices"][0]
    assert ids(c) == want[: ends[0] if ends else None]
    assert c["finish_reason"] == ("stop" if ends else "length") and c["text"] == tok.decode(ids(c))


def test_eval_generation_bench_smoke(capsys):
    from conftest import load_bench

    assert load_bench("eval_generation").main(["--prompts", "2", "--new", "4", "--threads", "2"]) == 0
    out = capsys.readouterr().out
    assert "ratio:" in out and "same completions: yes" in out
