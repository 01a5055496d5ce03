"""Constrained decoding on CPU: three grammar libraries' cost per generated token, against the
engine's own unconstrained decode step measured in the same run.

    .venv/bin/python bench/structured_overhead.py [--schemas 20] [--max-tokens 200]

The tokenizer is the 4,096-token byte-level BPE of bench/serve_throughput.py (the cpu preset's
model shape, random weights). For each library (llguidance, xgrammar, outlines-core): build its
tokenizer view from the vocabulary's bytes, compile the same seeded random JSON schemas
(glassgpt.serve.testing.random_schema), then for every token: compute the mask of allowed
tokens, apply it to a row of logits, sample (seeded), advance the matcher; until the grammar is
complete or max-tokens. The time spent in the library's calls (mask computed and applied,
token accepted) per token is the overhead, printed next to the engine's unconstrained decode
time per token (batch 1, same model). A library is a candidate only if every complete answer
validates against its schema.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


class LLGuidance:
    name = "llguidance"

    def __init__(self, tok, end_id):
        from glassgpt.serve.grammar import Grammars

        self.g = Grammars(tok, end_id)

    def compile(self, schema):
        return self.g.matcher(self.g.json_schema(schema, "schema"), "schema")

    @staticmethod
    def start(compiled):
        return compiled.fork()

    @staticmethod
    def mask(m, logits):
        return m.mask(logits)

    @staticmethod
    def accept(m, t):
        assert m.accept(t)

    @staticmethod
    def done(m):
        return m.complete


class XGrammar:
    name = "xgrammar"

    def __init__(self, tok, end_id):
        import xgrammar as xgr

        self.xgr = xgr
        names = set(tok.special.values())
        vocab = [b"" if i in names else tok.decode_bytes([i]) for i in range(tok.vocab_size)]
        self.info = xgr.TokenizerInfo(vocab, xgr.VocabType.RAW, vocab_size=tok.vocab_size, stop_token_ids=[end_id])
        self.compiler = xgr.GrammarCompiler(self.info, max_threads=1)
        self.bitmask = xgr.allocate_token_bitmask(1, tok.vocab_size)

    def compile(self, schema):
        return self.compiler.compile_json_schema(json.dumps(schema), any_whitespace=False, separators=(", ", ": "))

    def start(self, compiled):
        return self.xgr.GrammarMatcher(compiled)

    def mask(self, m, logits):
        m.fill_next_token_bitmask(self.bitmask)
        logits = logits.unsqueeze(0).clone()
        self.xgr.apply_token_bitmask_inplace(logits, self.bitmask)
        return logits[0]

    @staticmethod
    def accept(m, t):
        assert m.accept_token(t)

    @staticmethod
    def done(m):
        return m.is_terminated()


class OutlinesCore:
    name = "outlines-core"

    def __init__(self, tok, end_id):
        import outlines_core as oc

        self.oc = oc
        names = set(tok.special.values())
        vocab: dict[bytes, list[int]] = {}
        for i in range(tok.vocab_size):
            if i not in names:
                vocab.setdefault(tok.decode_bytes([i]), []).append(i)
        self.vocab = oc.Vocabulary(end_id, vocab)
        self.end_id = end_id
        self.n = tok.vocab_size
        self.buf = torch.zeros((self.n + 31) // 32, dtype=torch.int32)

    def compile(self, schema):
        regex = self.oc.json_schema.build_regex_from_schema(json.dumps(schema), whitespace_pattern="")
        return self.oc.Index(regex, self.vocab)

    def start(self, index):
        return self.oc.Guide(index)

    def mask(self, m, logits):
        m.write_mask_into(self.buf.data_ptr(), self.buf.numel(), 4)
        bits = (self.buf.unsqueeze(1) >> torch.arange(32, dtype=torch.int32)) & 1
        keep = bits.flatten()[: self.n].bool()
        return logits.masked_fill(~keep, float("-inf"))

    @staticmethod
    def accept(m, t):
        m.advance(t, return_tokens=False)

    def done(self, m):
        return m.is_finished()


def run(lib, compiled, schemas, vocab, end_id, max_tokens, tok):
    """Sample every schema's answer; returns (seconds inside the library per token, tokens,
    answers that fail their schema though the grammar said complete, answers cut by max-tokens)."""
    import jsonschema

    tokens, spent, invalid, cut = 0, 0.0, 0, 0
    clock = time.perf_counter
    for i, schema in enumerate(schemas):
        g = torch.Generator().manual_seed(i)
        rows = torch.randn(max_tokens, vocab, generator=g) * 3  # drawn before timing
        t0 = clock()
        m = lib.start(compiled[i])
        spent += clock() - t0
        out, complete = [], False
        for k in range(max_tokens):
            t0 = clock()
            lg = lib.mask(m, rows[k])  # the library's mask, applied to the logits
            spent += clock() - t0
            t = int(torch.multinomial(torch.softmax(lg, -1), 1, generator=g))
            if t == end_id:
                complete = True
                break
            t0 = clock()
            lib.accept(m, t)
            done = lib.done(m)
            spent += clock() - t0
            out.append(t)
            if done:
                complete = True
                break
        tokens += len(out)
        if not complete:
            cut += 1  # random logits can wander (an unbounded number's digits): no verdict on the library
        else:
            try:
                jsonschema.validate(json.loads(tok.decode(out)), schema)
            except (ValueError, jsonschema.ValidationError):
                invalid += 1
    return spent / max(1, tokens), tokens, invalid, cut


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--schemas", type=int, default=20)
    ap.add_argument("--max-tokens", type=int, default=300)
    a = ap.parse_args(argv)
    from eval_generation import cpu_name
    from serve_throughput import build_engine, kv_vs_recompute_kv_only

    from glassgpt.serve.testing import random_schema

    torch.set_num_threads(1)
    engine = build_engine(None, max_batch=1).start()
    tok = engine.tokenizer
    end_id = tok.special["<|assistant_end|>"]
    rng = random.Random(0)
    schemas = [random_schema(rng) for _ in range(a.schemas)]
    # Best of 3 for every figure: the machine is shared, and contention only ever adds time.
    step = 1.0 / max(kv_vs_recompute_kv_only(engine, ctx=64, new=64) for _ in range(3))
    engine.stop()
    print(f"CPU: {cpu_name()}, torch threads 1 (machine shared with other jobs: "
          f"noisy; best of 3 runs kept); vocabulary {tok.vocab_size}; {a.schemas} random schemas")
    print(f"reference: the engine's unconstrained decode step, batch 1, cpu-preset shape: {step * 1e3:.2f} ms/token")
    results = []
    for cls in (LLGuidance, XGrammar, OutlinesCore):
        try:
            t0 = time.perf_counter()
            lib = cls(tok, end_id)
            setup = time.perf_counter() - t0
            t0 = time.perf_counter()
            compiled = [lib.compile(s) for s in schemas]
            comp = (time.perf_counter() - t0) / len(schemas)
        except Exception as e:  # a library that cannot take a schema is reported, not fatal
            print(f"  {cls.name}: failed to compile: {type(e).__name__}: {str(e)[:120]}")
            continue
        runs = [run(lib, compiled, schemas, tok.vocab_size, end_id, a.max_tokens, tok) for _ in range(3)]
        over, n, bad, cut = min(runs)
        results.append((over, cls.name, bad))
        print(f"  {cls.name:13s} tokenizer view {setup * 1e3:7.1f} ms, compile {comp * 1e3:8.2f} ms/schema, "
              f"mask + advance {over * 1e6:7.1f} us/token = {over / step:5.1%} of a decode step ({n} tokens; "
              f"{len(schemas) - bad - cut}/{len(schemas)} complete answers valid, {bad} invalid, {cut} cut at max-tokens)")
    valid = [r for r in results if not r[2]]  # a library whose answers break their schema is not a candidate
    if valid:
        best = min(valid)
        others = ", ".join(f"{name} {o / best[0]:.2f}x" + (f" ({bad} invalid)" if bad else "")
                           for o, name, bad in sorted(results) if name != best[1])
        print(f"lowest overhead per token with no invalid answer: {best[1]}; the others' overhead: {others}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
