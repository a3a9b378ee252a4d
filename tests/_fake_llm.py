"""A scripted OpenAI-compatible chat-completions server on 127.0.0.1, for the LLM writer's tests (library and CLI)."""
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KEY = "sk-test-DO-NOT-LEAK-12345"


class FakeLLM:
    """Scripted chat-completions server. ``script`` is a list of actions consumed per request; when it is empty the
    server answers well: a diagnosis, or for a reflection prompt an answer copying the boxes and labels asked for."""

    def __init__(self):
        self.script: list = []
        self.default = "ok"
        self.requests: list[dict] = []
        self.auth: list[str] = []
        self.lock = threading.Lock()
        self.inflight = self.max_inflight = 0
        owner = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with owner.lock:
                    owner.requests.append(body)
                    owner.auth.append(self.headers.get("Authorization", ""))
                    action = owner.script.pop(0) if owner.script else owner.default
                    owner.inflight += 1
                    owner.max_inflight = max(owner.max_inflight, owner.inflight)
                try:
                    self._act(action, body)
                finally:
                    with owner.lock:
                        owner.inflight -= 1

            def _act(self, action, body):
                if action == "429":
                    return self._send(429, {"error": {"message": "rate limited"}}, {"Retry-After": "0"})
                if action == "500":
                    return self._send(500, {"error": {"message": "boom"}})
                if action == "sleep":
                    time.sleep(1.5)
                    return self._send(200, owner.completion("late"))
                if action == "slow":
                    time.sleep(0.05)
                if action == "garbage":
                    return self._send(200, owner.completion("I am unable to comply with that request."))
                return self._send(200, owner.completion(owner.good_answer(body)))

            def _send(self, code, obj, headers=None):
                data = json.dumps(obj).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    @staticmethod
    def completion(text):
        return {"id": "c1", "object": "chat.completion", "created": 0, "model": "fake",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}}

    @staticmethod
    def good_answer(body):
        user = body["messages"][-1]["content"]
        text = user if isinstance(user, str) else " ".join(p.get("text", "") for p in user)
        if "Boxes to copy:" in text:
            boxes = re.search(r"Boxes to copy: (.*)", text).group(1)
            labels = re.search(r"Category names to copy: (.*)", text).group(1)
            return (f"Detection: an abnormality is present. Localization: it lies at {boxes}. "
                    f"Recognition: it is {labels}.")
        if "Rewrite it" in text:
            return "Detection: no abnormality. Localization: none. Recognition: the image is normal."
        return "The image shows a well-defined opacity."

    def close(self):
        self.server.shutdown()
        self.server.server_close()
