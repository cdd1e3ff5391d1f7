#!/usr/bin/env python3
"""Load generator for OpenAI-compatible servers: aggregate generated tokens/s and p50/p99
time-to-first-token (TTFT) and inter-token latency (ITL) at several concurrency levels.

Each level runs C client threads in a closed loop (each sends its next request when the last one
ends) of streamed, greedy chat completions of ~100 prompt tokens and --max-tokens generated
tokens. Generation is kept from stopping early by `"ignore_eos": true` (llama-server and vLLM
honour it; baicai too) and by prompts that ask for long answers. Standard library only.

    # any server
    scripts/bench-serve.py --url http://127.0.0.1:8080 [--api-key KEY] [--served-model NAME] [-c 1,4,16,32]
    # baicai serve against llama.cpp's llama-server on the same model, alternating per level
    LLAMA_SERVER=/path/to/llama-server scripts/bench-serve.py --compare \\
        -m models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf [-t THREADS] [--json out.json]

Structured output: `--response-format json` sends every request with a JSON schema (an object with
one long string, so constrained answers run as long as free ones); `--response-format both` runs
each level twice on the same server, free and constrained, alternating which goes first, and prints
the ratio — the cost of constrained decoding measured in one run:

    scripts/bench-serve.py --url http://127.0.0.1:8080 --response-format both -c 1,16

Tokens are counted from the final usage chunk (`stream_options.include_usage`) where the server
sends one, else as the number of chunks that carry text (one token each in both servers). TTFT is
from sending the request to the first chunk with text; ITL pools the gaps between consecutive text
chunks of all requests of a level.
"""

import argparse
import http.client
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TOPICS = [
    "the history and design of relational database engines",
    "how garbage collectors in managed language runtimes work",
    "the evolution of CPU cache hierarchies and memory bandwidth",
    "compilers: parsing, intermediate representations and register allocation",
    "distributed consensus protocols such as Paxos and Raft",
    "the design of operating system schedulers",
    "how modern web browsers render a page",
    "the mathematics and engineering of error-correcting codes",
]
# With the chat template's own tokens (Qwen2.5 adds a default system prompt), ~100 prompt tokens.
PROMPT = (
    "Write a long, detailed technical article for experienced engineers about {topic}. Cover its "
    "history, the core ideas, the main designs in use today and their trade-offs, worked examples, "
    "common mistakes and open problems, with headings, full paragraphs and concrete numbers wherever "
    "you can. Do not stop early."
)


# The constrained form of the same answer: the article as one JSON string.
ARTICLE_SCHEMA = {
    "type": "object",
    "properties": {"title": {"type": "string", "maxLength": 80}, "article": {"type": "string"}},
    "required": ["title", "article"],
    "additionalProperties": False,
}


def percentile(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


class Target:
    """An OpenAI-compatible endpoint: base URL, model name, key."""

    def __init__(self, name, url, model=None, api_key=None, response_format="text"):
        self.name, self.api_key, self.response_format = name, api_key, response_format
        # With two targets on one server (--response-format both), a prefix per target and level
        # keeps one run's prompts from being served from the prefix cache the other one filled.
        self.salt = ""
        u = urllib.parse.urlparse(url)
        self.host, self.port = u.hostname, u.port or 80
        self.prefix = u.path.rstrip("/")
        if self.prefix.endswith("/v1"):
            self.prefix = self.prefix[:-3]
        self.model = model or self.models()[0]

    def headers(self):
        h = {"Content-Type": "application/json"}
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        return h

    def models(self):
        c = http.client.HTTPConnection(self.host, self.port, timeout=30)
        c.request("GET", self.prefix + "/v1/models", headers=self.headers())
        r = c.getresponse()
        body = json.loads(r.read())
        c.close()
        return [m["id"] for m in body["data"]]


def one_request(conn, target, i, max_tokens):
    """Send request i on `conn`; (ok, ttft_s, token_times, completion_tokens, prompt_tokens, err)."""
    body = {
        "model": target.model,
        "messages": [{"role": "user", "content": target.salt + PROMPT.format(topic=TOPICS[i % len(TOPICS)])}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if target.response_format == "json":
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "article", "schema": ARTICLE_SCHEMA}}
    t0 = time.perf_counter()
    conn.request("POST", target.prefix + "/v1/chat/completions", body=json.dumps(body), headers=target.headers())
    r = conn.getresponse()
    if r.status != 200:
        return False, None, [], 0, 0, f"HTTP {r.status}: {r.read()[:200]!r}"
    times, usage, done = [], None, False
    while True:
        line = r.readline()
        if not line:
            break
        line = line.strip()
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if payload == b"[DONE]":
            done = True
            continue
        chunk = json.loads(payload)
        if chunk.get("usage"):
            usage = chunk["usage"]
        for ch in chunk.get("choices") or []:
            if (ch.get("delta") or {}).get("content"):
                times.append(time.perf_counter())
    r.read()
    if not done:
        return False, None, times, len(times), 0, "stream ended without [DONE]"
    if not times:
        return False, None, times, 0, 0, "no text generated"
    completion = usage["completion_tokens"] if usage else len(times)
    prompt = usage["prompt_tokens"] if usage else 0
    return True, times[0] - t0, [t - t0 for t in times], completion, prompt, None


def run_level(target, concurrency, n_requests, max_tokens):
    """C closed-loop clients, n_requests in all; the level's figures as a dict."""
    lock = threading.Lock()
    next_i = [0]
    records, errors = [], []

    def worker():
        conn = http.client.HTTPConnection(target.host, target.port, timeout=600)
        while True:
            with lock:
                i = next_i[0]
                next_i[0] += 1
            if i >= n_requests:
                break
            for attempt in range(2):
                try:
                    rec = one_request(conn, target, i, max_tokens)
                    break
                except (OSError, http.client.HTTPException, ValueError) as e:
                    rec = (False, None, [], 0, 0, f"{type(e).__name__}: {e}")
                    conn.close()
                    conn = http.client.HTTPConnection(target.host, target.port, timeout=600)
                    # a kept-alive connection the server closed meanwhile: once more on a new one
                    if not isinstance(e, http.client.RemoteDisconnected):
                        break
            with lock:
                (records if rec[0] else errors).append(rec)
        conn.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ttft = [r[1] for r in records]
    itl = [b - a for r in records for a, b in zip(r[2], r[2][1:])]
    gen = sum(r[3] for r in records)
    prompts = [r[4] for r in records if r[4]]
    return {
        "engine": target.name,
        "concurrency": concurrency,
        "requests": len(records),
        "errors": len(errors),
        "first_error": errors[0][5] if errors else None,
        "wall_s": round(wall, 3),
        "generated_tokens": gen,
        "mean_prompt_tokens": round(statistics.mean(prompts), 1) if prompts else None,
        "tokens_per_s": round(gen / wall, 2) if wall > 0 else 0.0,
        "ttft_p50_s": round(percentile(ttft, 50), 4),
        "ttft_p99_s": round(percentile(ttft, 99), 4),
        "itl_p50_ms": round(percentile(itl, 50) * 1000, 2),
        "itl_p99_ms": round(percentile(itl, 99) * 1000, 2),
    }


# --- servers started by --compare -------------------------------------------------------------


class Launched:
    """A server process started by this script; its stderr goes to a log file."""

    def __init__(self, name, cmd, port, log_path, listening_re=None):
        self.name, self.cmd, self.log_path = name, cmd, log_path
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        self.port = port if port else self._port_from_log(listening_re)
        self._wait_health()

    def _port_from_log(self, pattern, timeout=300):
        deadline = time.time() + timeout
        while time.time() < deadline:
            m = re.search(pattern, Path(self.log_path).read_text(errors="replace"))
            if m:
                return int(m.group(1))
            if self.proc.poll() is not None:
                sys.exit(f"{self.name} exited {self.proc.returncode}; see {self.log_path}")
            time.sleep(0.1)
        sys.exit(f"{self.name} did not say where it listens; see {self.log_path}")

    def _wait_health(self, timeout=300):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"{self.name} exited {self.proc.returncode}; see {self.log_path}")
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                c.request("GET", "/health")
                if c.getresponse().status == 200:
                    return
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.2)
        sys.exit(f"{self.name} never became healthy; see {self.log_path}")

    def peak_rss_mib(self):
        try:
            for line in open(f"/proc/{self.proc.pid}/status"):
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) // 1024
        except OSError:
            pass
        return None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_servers(args, levels):
    model = str(Path(args.model).resolve())
    llama = args.llama_server or os.environ.get("LLAMA_SERVER")
    if not llama or not Path(llama).exists():
        sys.exit("--compare needs llama.cpp's llama-server: set LLAMA_SERVER=/path/to/llama-server (see BENCHMARKS.md)")
    max_c = max(levels)
    log_dir = Path(args.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    baicai_cmd = [args.baicai, "serve", "-m", model, "--host", "127.0.0.1", "--port", "0",
                  "--max-seqs", str(max_c), "--ctx-size", str(args.ctx_per_seq), "-t", str(args.threads)]
    # llama-server splits -c evenly over its --parallel slots: each slot gets ctx_per_seq.
    n_parallel = max(args.llama_parallel, max_c)
    llama_cmd = [llama, "-m", model, "--host", "127.0.0.1", "--port", str(free_port()),
                 "--parallel", str(n_parallel), "--cont-batching", "-c", str(args.ctx_per_seq * n_parallel),
                 "-t", str(args.threads), "-tb", str(args.threads),
                 # one HTTP thread per open stream, else streams wait for a thread, not for the model
                 "--threads-http", str(n_parallel + 4)]
    print("starting:", " ".join(baicai_cmd), file=sys.stderr)
    b = Launched("baicai", baicai_cmd, None, log_dir / "bench-serve-baicai.log", r"listening on http://[^\s:]+:(\d+)")
    print("starting:", " ".join(llama_cmd), file=sys.stderr)
    lport = int(llama_cmd[llama_cmd.index("--port") + 1])
    try:
        l = Launched("llama-server", llama_cmd, lport, log_dir / "bench-serve-llama-server.log")
    except SystemExit:
        b.stop()
        raise
    return [b, l]


def print_table(results, compare):
    cols = ["concurrency", "engine", "requests", "errors", "tokens_per_s", "ttft_p50_s", "ttft_p99_s",
            "itl_p50_ms", "itl_p99_ms", "mean_prompt_tokens"]
    heads = ["conc", "engine", "req", "err", "tok/s", "TTFT p50 s", "TTFT p99 s", "ITL p50 ms", "ITL p99 ms", "prompt tok"]
    rows = [[str(r[c]) for c in cols] for r in results]
    if compare:
        by = {(r["concurrency"], r["engine"]): r for r in results}
        for c in sorted({r["concurrency"] for r in results}):
            a, b = by.get((c, "baicai")), by.get((c, "llama-server"))
            if a and b:
                def ratio(k, inverse=False):
                    x, y = (b[k], a[k]) if inverse else (a[k], b[k])
                    return f"{x / y:.2f}x" if y else "-"
                # higher is better for every ratio: throughput baicai/llama, latencies llama/baicai
                rows.append([str(c), "ratio", "", "", ratio("tokens_per_s"), ratio("ttft_p50_s", True),
                             ratio("ttft_p99_s", True), ratio("itl_p50_ms", True), ratio("itl_p99_ms", True), ""])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]
    line = lambda cells: "  ".join(c.rjust(w) if i != 1 else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    print(line(heads))
    for r in rows:
        print(line(r))
    if compare:
        print("ratio rows: tok/s = baicai / llama-server; latencies = llama-server / baicai (above 1: baicai better)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="base URL of an OpenAI-compatible server (e.g. http://127.0.0.1:8080)")
    ap.add_argument("--served-model", help="model name to send (default: the first of /v1/models)")
    ap.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"))
    ap.add_argument("-c", "--concurrency", default="1,4,16,32", help="comma-separated levels (default 1,4,16,32)")
    ap.add_argument("--requests-per-client", type=int, default=2, help="requests per client per level (default 2)")
    ap.add_argument("--min-requests", type=int, default=4, help="at least this many requests per level (default 4)")
    ap.add_argument("--max-tokens", type=int, default=128, help="generated tokens per request (default 128)")
    ap.add_argument("--warmup", type=int, default=1, help="unmeasured requests per server before the first level")
    ap.add_argument("--json", help="write all results as JSON to this file ('-' = stdout)")
    ap.add_argument("--response-format", choices=["text", "json", "both"], default="text",
                    help="free text, a JSON schema (constrained decoding), or both alternating (default text)")
    cmp = ap.add_argument_group("--compare: start baicai serve and llama-server on one model, alternate per level")
    cmp.add_argument("--compare", action="store_true")
    cmp.add_argument("-m", "--model-path", dest="model", default=str(ROOT / "models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"))
    cmp.add_argument("--baicai", default=str(ROOT / "target/release/baicai"))
    cmp.add_argument("--llama-server", help="path of llama-server (default: $LLAMA_SERVER)")
    cmp.add_argument("-t", "--threads", type=int, default=os.cpu_count(), help="threads of each server (default: all CPUs)")
    cmp.add_argument("--ctx-per-seq", type=int, default=512, help="context per sequence (default 512)")
    cmp.add_argument("--llama-parallel", type=int, default=32, help="llama-server --parallel (at least the top level; default 32)")
    cmp.add_argument("--log-dir", default=str(ROOT / "target"), help="where the servers' logs go (default target/)")
    args = ap.parse_args()

    levels = [int(x) for x in args.concurrency.split(",") if x]
    if not args.compare and not args.url:
        ap.error("give --url, or --compare to start both servers")

    launched = []
    try:
        if args.compare:
            launched = start_servers(args, levels)
            targets = [Target(s.name, f"http://127.0.0.1:{s.port}") for s in launched]
        elif args.response_format == "both":
            targets = [Target(f"server/{f}", args.url, args.served_model, args.api_key, f) for f in ("text", "json")]
        else:
            targets = [Target("server", args.url, args.served_model, args.api_key, args.response_format)]
        for t in targets:
            for i in range(args.warmup):
                conn = http.client.HTTPConnection(t.host, t.port, timeout=600)
                ok = one_request(conn, t, i, args.max_tokens)
                conn.close()
                if not ok[0]:
                    sys.exit(f"{t.name}: warm-up request failed: {ok[5]}")
        results = []
        for li, c in enumerate(levels):
            n = max(c * args.requests_per_client, args.min_requests)
            # alternate which engine goes first, so neither always runs on a warmer machine
            order = targets if li % 2 == 0 else targets[::-1]
            for t in order:
                if args.response_format == "both":
                    t.salt = f"[{t.name}, {c} clients] "
                print(f"{t.name}: concurrency {c}, {n} requests ...", file=sys.stderr, flush=True)
                r = run_level(t, c, n, args.max_tokens)
                if r["errors"]:
                    print(f"  {r['errors']} failed, e.g. {r['first_error']}", file=sys.stderr)
                print(f"  {r['tokens_per_s']} tok/s, TTFT p50 {r['ttft_p50_s']} s", file=sys.stderr)
                results.append(r)
        print_table(results, args.compare)
        if args.response_format == "both":
            for c in levels:
                by = {r["engine"]: r["tokens_per_s"] for r in results if r["concurrency"] == c}
                if by.get("server/text"):
                    print(f"concurrency {c}: json/text throughput = {by['server/json'] / by['server/text']:.3f}")
        dump = {
            "config": {"levels": levels, "max_tokens": args.max_tokens, "requests_per_client": args.requests_per_client,
                       "min_requests": args.min_requests, "threads": args.threads if args.compare else None,
                       "model": args.model if args.compare else targets[0].model,
                       "response_format": args.response_format,
                       "commands": [s.cmd for s in launched]},
            "peak_rss_mib": {s.name: s.peak_rss_mib() for s in launched},
            "results": results,
        }
        if args.json == "-":
            print(json.dumps(dump, indent=1))
        elif args.json:
            Path(args.json).write_text(json.dumps(dump, indent=1) + "\n")
            print(f"JSON: {args.json}", file=sys.stderr)
    finally:
        for s in launched:
            s.stop()


if __name__ == "__main__":
    main()
