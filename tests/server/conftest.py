"""Fixtures and helpers of the end-to-end tests of `baicai serve` (run by scripts/server-tests.sh).

Everything that depends on the server's choices — flags, metric names, limits, error statuses —
is a constant at the top of this file, so a change on the server side is one edit here.

A session-wide server (with an API key) serves the openai-client, bad-input and load tests; tests
that need other flags (a tiny queue) or that end the process (SIGTERM) start their own. Each
server's stderr is kept in target/server-tests-logs/NAME.log.
"""

import json
import os
import re
import select
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

ROOT = Path(__file__).resolve().parents[2]
BAICAI = Path(os.environ.get("BAICAI_BIN", ROOT / "target/release/baicai"))
MODEL = ROOT / "models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
GEMMA = ROOT / "models/gemma-3-270m-q4_k_m.gguf"  # a template without tool calls, a SentencePiece vocabulary
GEMMA_ARGS = ["--ctx-size", "1024", "--kv-cache-mib", "64", "--max-seqs", "8"]
LOG_DIR = ROOT / "target/server-tests-logs"

API_KEY = "sk-baicai-test-3f9c"
HOST = "127.0.0.1"
CTX_SIZE = 2048  # per sequence: the "prompt longer than the context" cases go past it
MAX_SEQS = 32  # the load test runs 32 streams at once
KV_CACHE_MIB = 384  # 32 × ~150 tokens of Qwen2.5-0.5B's KV cache fit many times over
# Flags of the session server (the port and key are added by start_server).
# Short client timeouts keep the slow-client tests short (defaults 30 s).
BODY_TIMEOUT_S = 5  # --body-timeout: request headers and body must arrive within this
STALL_TIMEOUT_S = 5  # --stall-timeout: a stream unread this long is dropped
SERVER_ARGS = ["--ctx-size", str(CTX_SIZE), "--max-seqs", str(MAX_SEQS), "--kv-cache-mib", str(KV_CACHE_MIB),
               "--body-timeout", str(BODY_TIMEOUT_S), "--stall-timeout", str(STALL_TIMEOUT_S)]
# The 429 test's server: one running sequence, a queue of two.
SMALL_QUEUE_ARGS = ["--ctx-size", str(CTX_SIZE), "--max-seqs", "1", "--max-queue", "2", "--kv-cache-mib", "64"]

LISTENING_RE = re.compile(r"listening on http://([^\s:/]+):(\d+)")
STARTUP_TIMEOUT_S = 120  # model load on a slow CI machine
SHUTDOWN_TIMEOUT_S = 30  # SIGTERM → exit
SHUTDOWN_GRACE_S = 3  # --shutdown-timeout of the SIGTERM test's server: in-flight streams are cut
REQUEST_TIMEOUT_S = 120  # any single request of the suite

# Prometheus names, from crates/baicai-server/src/metrics.rs.
METRIC_RUNNING = "baicai_requests_running"  # gauge: sequences being generated
METRIC_WAITING = "baicai_requests_waiting"  # gauge: requests waiting for a slot
METRIC_KV_USED = "baicai_kv_cache_blocks_used"  # gauge
METRIC_KV_TOTAL = "baicai_kv_cache_blocks_total"  # gauge
METRIC_PREFIX_CACHED = None  # gauge of blocks held only by the prefix cache, if the server has one
METRIC_REQUESTS = "baicai_requests_total"  # counter with labels endpoint, status
METRIC_GENERATED = "baicai_generation_tokens_total"  # counter: tokens generated

# Statuses and limits of the bad-input cases.
STATUS_INVALID = 400  # OpenAI's status for every invalid_request_error
STATUS_UNKNOWN_MODEL = 404  # OpenAI: model_not_found
BODY_LIMIT_PROBE_BYTES = 64 * 1024 * 1024  # surely over the server's request body limit
SLOW_CLIENT_CUTOFF_S = 3 * BODY_TIMEOUT_S  # a byte-a-second body must be cut off within this
STALLED_READER_RELEASE_S = 120  # a never-read stream must give up its decode slot within this

# The normal request sent alongside each bad-input case; its greedy text is taken once per session.
REFERENCE_CHAT = {
    "messages": [{"role": "user", "content": "List the first five prime numbers."}],
    "max_tokens": 16,
    "temperature": 0,
}


# ---------------------------------------------------------------------------------------------
# The server process


class Server:
    """A running `baicai serve`: its process, address, stderr log and HTTP helpers."""

    def __init__(self, name, extra_args, api_key, model=MODEL):
        self.name = name
        self.api_key = api_key
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.log_path = LOG_DIR / f"{name}.log"
        self.stderr_lines = []
        self._listening = threading.Event()
        cmd = [str(BAICAI), "serve", "-m", str(model), "--host", HOST, "--port", "0", *extra_args]
        if api_key:
            cmd += ["--api-key", api_key]
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.port = None
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        self._wait_ready()
        self.base = f"http://{HOST}:{self.port}"
        self.model = self.get("/v1/models").json()["data"][0]["id"]

    def _drain_stderr(self):
        with open(self.log_path, "w", encoding="utf-8") as log:
            for raw in self.proc.stderr:
                line = raw.decode("utf-8", "replace")
                log.write(line)
                log.flush()
                self.stderr_lines.append(line)
                m = LISTENING_RE.search(line)
                if m and self.port is None:
                    self.port = int(m.group(2))
                    self._listening.set()

    def _wait_ready(self):
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not self._listening.wait(0.1):
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.cmd} exited {self.proc.returncode} before listening:\n{self.tail()}")
            if time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError(f"{self.cmd} printed no 'listening on' line in {STARTUP_TIMEOUT_S} s:\n{self.tail()}")
        while True:
            try:
                if httpx.get(f"http://{HOST}:{self.port}/health", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError(f"{self.cmd}: /health never answered 200:\n{self.tail()}")
            time.sleep(0.1)

    def tail(self, n=30):
        return "".join(self.stderr_lines[-n:])

    def headers(self, key="default"):
        key = self.api_key if key == "default" else key
        return {"Authorization": f"Bearer {key}"} if key else {}

    def get(self, path, **kw):
        kw.setdefault("headers", self.headers())
        return httpx.get(self.base + path, timeout=REQUEST_TIMEOUT_S, **kw)

    def post(self, path, body, **kw):
        """POST a JSON body (dict) or raw bytes; the response, whatever its status."""
        headers = {"Content-Type": "application/json", **self.headers(), **kw.pop("headers", {})}
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx.post(self.base + path, content=content, headers=headers, timeout=REQUEST_TIMEOUT_S, **kw)

    def client(self, **kw):
        return openai.OpenAI(base_url=self.base + "/v1", api_key=self.api_key or "none", timeout=REQUEST_TIMEOUT_S, max_retries=0, **kw)

    def chat(self, body):
        """A chat completion with the served model; asserts 200 and returns the JSON."""
        r = self.post("/v1/chat/completions", {"model": self.model, **body})
        assert r.status_code == 200, f"{r.status_code} {r.text}"
        return r.json()

    def metrics(self):
        r = httpx.get(self.base + "/metrics", timeout=REQUEST_TIMEOUT_S)
        assert r.status_code == 200, r.text
        return parse_prometheus(r.text)

    def rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        """SIGTERM, then the exit status (killed after SHUTDOWN_TIMEOUT_S: returns None)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(SHUTDOWN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None


def start_server(name, extra_args=(), api_key=None, model=MODEL):
    return Server(name, list(extra_args), api_key, model)


def stop_and_check(server):
    rc = server.stop()
    assert rc == 0, f"{server.name}: exit status {rc} after SIGTERM (None = still running after {SHUTDOWN_TIMEOUT_S} s):\n{server.tail()}"


@pytest.fixture(scope="session")
def server():
    """The session's server, with --api-key; must exit 0 on SIGTERM at the end."""
    if not BAICAI.exists():
        pytest.fail(f"{BAICAI} not built (cargo build --release -p baicai-cli)")
    s = start_server("main", SERVER_ARGS, API_KEY)
    yield s
    assert s.alive(), f"the server died during the session:\n{s.tail()}"
    stop_and_check(s)


@pytest.fixture(scope="session")
def gemma():
    """A second server, without a key, on Gemma 3 270M (tool and structured-output tests)."""
    if not GEMMA.exists():
        pytest.fail(f"{GEMMA} missing (scripts/fetch-models.sh)")
    s = start_server("gemma", GEMMA_ARGS, None, GEMMA)
    yield s
    stop_and_check(s)


@pytest.fixture(scope="session")
def reference(server):
    """REFERENCE_CHAT's greedy text, from the server with nothing else running."""
    text = server.chat(REFERENCE_CHAT)["choices"][0]["message"]["content"]
    assert text, "empty reference completion"
    return text


@pytest.fixture(scope="session")
def client(server):
    return server.client()


# ---------------------------------------------------------------------------------------------
# Helpers


def check_reference(server, reference):
    """The normal request still gets its greedy text."""
    body = server.chat(REFERENCE_CHAT)
    got = body["choices"][0]["message"]["content"]
    assert got == reference, f"normal request disturbed: {got!r} != {reference!r}"


class Concurrent:
    """Runs the normal reference request in a thread while the with-block sends something else:
    `with Concurrent(server, reference): ...bad request...` asserts on exit that it completed
    with the reference text."""

    def __init__(self, server, reference):
        self.server, self.reference, self.error = server, reference, None

    def _run(self):
        try:
            check_reference(self.server, self.reference)
        except BaseException as e:  # reported in __exit__
            self.error = e

    def __enter__(self):
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.thread.join(REQUEST_TIMEOUT_S)
        if exc[0] is None:
            assert not self.thread.is_alive(), "the concurrent normal request did not finish"
            if self.error:
                raise self.error
        return False


def assert_error(resp, status, names):
    """`resp` has `status` and OpenAI's error object whose message names one of `names`
    (case-insensitive)."""
    assert resp.status_code == status, f"expected {status}, got {resp.status_code}: {resp.text[:500]}"
    try:
        body = resp.json()
    except ValueError:
        pytest.fail(f"error body is not JSON: {resp.text[:500]!r}")
    assert_error_object(body, names)
    return body["error"]


def assert_error_object(body, names):
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), f"not an error object: {body}"
    err = body["error"]
    for key in ("message", "type", "param", "code"):
        assert key in err, f"error object lacks {key!r}: {err}"
    assert isinstance(err["message"], str) and err["message"], err
    assert isinstance(err["type"], str) and err["type"], err
    names = [names] if isinstance(names, str) else names
    msg = err["message"].lower()
    assert any(n.lower() in msg for n in names), f"message names none of {names}: {err['message']!r}"


def parse_prometheus(text):
    """{name: value} for unlabelled samples and {name{labels}: value} for labelled ones."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            continue
    return out


def metric(metrics, name):
    """The value of an unlabelled metric, or the sum over its label sets."""
    if name in metrics:
        return metrics[name]
    values = [v for k, v in metrics.items() if k.startswith(name + "{")]
    if not values:
        raise AssertionError(f"metric {name} not exported; names: {sorted({k.split('{')[0] for k in metrics})}")
    return sum(values)


def read_sse(lines):
    """Parse a streamed response's lines into (chunks, saw_done); asserts it is well formed:
    every event a `data: ` line of JSON, `[DONE]` last."""
    chunks, done = [], False
    for line in lines:
        if line == "" or line.startswith(":"):
            continue
        assert not done, f"data after [DONE]: {line!r}"
        assert line.startswith("data: "), f"not an SSE data line: {line!r}"
        payload = line[len("data: "):]
        if payload == "[DONE]":
            done = True
            continue
        try:
            chunks.append(json.loads(payload))
        except ValueError:
            pytest.fail(f"SSE data is not JSON: {payload!r}")
    return chunks, done


def raw_request(port, head, body=b"", timeout=30.0, sock_opts=()):
    """Send a hand-made HTTP/1.1 request; stop sending as soon as the server answers (so a
    413 or a closed connection is seen even while a large body is still going out). Returns
    (status or None, raw response bytes)."""
    s = socket.create_connection((HOST, port), timeout=timeout)
    for level, opt, val in sock_opts:
        s.setsockopt(level, opt, val)
    s.setblocking(False)
    out = head + body
    sent, got = 0, b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            want_write = [s] if sent < len(out) else []
            r, w, _ = select.select([s], want_write, [], 0.5)
            if r:
                try:
                    data = s.recv(65536)
                except (ConnectionResetError, BrokenPipeError):
                    break
                if not data:
                    break
                got += data
                if b"\r\n\r\n" in got and _response_complete(got):
                    break
                continue
            if w:
                try:
                    sent += s.send(out[sent:sent + (1 << 20)])
                except (ConnectionResetError, BrokenPipeError):
                    # the server stopped reading; its answer may still be in our receive buffer
                    try:
                        s.setblocking(True)
                        s.settimeout(2)
                        got += s.recv(65536)
                    except OSError:
                        pass
                    break
    finally:
        s.close()
    m = re.match(rb"HTTP/1\.[01] (\d{3})", got)
    return (int(m.group(1)) if m else None), got


def _response_complete(raw):
    head, _, body = raw.partition(b"\r\n\r\n")
    m = re.search(rb"(?i)content-length:\s*(\d+)", head)
    if m:
        return len(body) >= int(m.group(1))
    if re.search(rb"(?i)transfer-encoding:\s*chunked", head):
        return body.endswith(b"0\r\n\r\n")
    return False


def response_json(raw):
    """The JSON body of a raw response (Content-Length or chunked)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    if re.search(rb"(?i)transfer-encoding:\s*chunked", head):
        out = b""
        while body:
            size_line, _, rest = body.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            out, body = out + rest[:size], rest[size + 2:]
        body = out
    return json.loads(body)
