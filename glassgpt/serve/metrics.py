"""Prometheus text-format metrics, without a client library: counters and histograms."""

from __future__ import annotations

import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Histogram:
    def __init__(self, buckets=LATENCY_BUCKETS):
        self.buckets = tuple(buckets)
        self.counts = [0] * len(self.buckets)
        self.sum = 0.0
        self.count = 0

    def observe(self, v: float) -> None:
        for i, b in enumerate(self.buckets):
            if v <= b:
                self.counts[i] += 1
        self.sum += v
        self.count += 1

    def render(self, name: str, help: str) -> list[str]:
        out = [f"# HELP {name} {help}", f"# TYPE {name} histogram"]
        for b, c in zip(self.buckets, self.counts):
            out.append(f'{name}_bucket{{le="{b}"}} {c}')
        out += [f'{name}_bucket{{le="+Inf"}} {self.count}', f"{name}_sum {self.sum:.6f}", f"{name}_count {self.count}"]
        return out


class Metrics:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests = defaultdict(int)  # (path, status) -> n
        self.prompt_tokens = defaultdict(int)
        self.completion_tokens = defaultdict(int)
        self.latency_h = Histogram()
        self.ttft_h = Histogram()

    def request(self, path: str, status: int) -> None:
        with self.lock:
            self.requests[(path, int(status))] += 1

    def tokens(self, model: str, prompt: int, completion: int) -> None:
        with self.lock:
            self.prompt_tokens[model] += prompt
            self.completion_tokens[model] += completion

    def latency(self, total: float, ttft: float) -> None:
        with self.lock:
            self.latency_h.observe(max(0.0, total))
            self.ttft_h.observe(max(0.0, ttft))

    def render(self, engines) -> str:
        with self.lock:
            out = ["# HELP glassgpt_requests_total HTTP requests by path and status.", "# TYPE glassgpt_requests_total counter"]
            for (path, status), n in sorted(self.requests.items()):
                out.append(f'glassgpt_requests_total{{path="{path}",status="{status}"}} {n}')
            for name, d, help in (("glassgpt_prompt_tokens_total", self.prompt_tokens, "Prompt tokens processed."),
                                  ("glassgpt_completion_tokens_total", self.completion_tokens, "Completion tokens generated.")):
                out += [f"# HELP {name} {help}", f"# TYPE {name} counter"]
                for model, n in sorted(d.items()):
                    out.append(f'{name}{{model="{model}"}} {n}')
            out += self.latency_h.render("glassgpt_request_latency_seconds", "Time from request to its last token.")
            out += self.ttft_h.render("glassgpt_time_to_first_token_seconds", "Time from request to its first token.")
        for name, attr, help in (("glassgpt_queue_depth", "queue_depth", "Requests waiting for a batch slot."),
                                 ("glassgpt_running_sequences", "n_running", "Sequences in the running batch.")):
            out += [f"# HELP {name} {help}", f"# TYPE {name} gauge"]
            for e in engines:
                out.append(f'{name}{{model="{e.name}"}} {getattr(e, attr)}')
        out += ["# HELP glassgpt_decode_steps_total Batched decode steps.", "# TYPE glassgpt_decode_steps_total counter"]
        for e in engines:
            out.append(f'glassgpt_decode_steps_total{{model="{e.name}"}} {e.steps}')
        return "\n".join(out) + "\n"
