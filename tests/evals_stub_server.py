"""A tiny Chat Completions / Completions stub on 127.0.0.1 (stdlib only), for tests.

Behaviour is scripted per test: `mode` = "ok" (echo the last message upper-cased),
"429" (rate-limit the first `fail_first` calls), "500", "garbage" (non-JSON body),
"down" (close the connection). `models`: the ids GET /v1/models lists; every request's
(method, path, body) is kept in `requests`."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Stub:
    def __init__(self, mode="ok", fail_first=0, reply=None, models=()):
        self.mode, self.fail_first, self.reply = mode, fail_first, reply
        self.models = list(models)
        self.requests = []
        self.calls = 0
        self.lock = threading.Lock()
        stub = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                stub.requests.append(("GET", self.path, None))
                if not self.path.endswith("/models"):
                    self.send_response(404)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                data = json.dumps({"object": "list", "data": [{"id": m, "object": "model", "created": 0,
                                                               "owned_by": "stub"} for m in stub.models]}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                n = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(n) or b"{}")
                stub.requests.append(("POST", self.path, body))
                with stub.lock:
                    stub.calls += 1
                    call = stub.calls
                if stub.mode in ("429", "500") and call <= stub.fail_first or stub.mode in ("500!",):
                    code = 429 if stub.mode == "429" else 500
                    data = json.dumps({"error": {"message": "try later", "type": "x"}}).encode()
                    self.send_response(code)
                    self.send_header("content-type", "application/json")
                    self.send_header("retry-after", "0")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                if stub.mode == "garbage":
                    data = b"<html>not json</html>"
                    self.send_response(200)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                if self.path.endswith("/chat/completions"):
                    last = body["messages"][-1]["content"]
                    text = stub.reply(last) if stub.reply else last.upper()
                    out = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                           "choices": [{"index": 0, "finish_reason": "stop",
                                        "message": {"role": "assistant", "content": text}}],
                           "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}
                else:
                    text = stub.reply(body["prompt"]) if stub.reply else body["prompt"].upper()
                    out = {"id": "x", "object": "text_completion", "created": 0, "model": body["model"],
                           "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}],
                           "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}}
                data = json.dumps(out).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *a):
        self.server.shutdown()
        self.server.server_close()
