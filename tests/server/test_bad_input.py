"""Bad input never crashes the server or disturbs other requests: each case gets the right 4xx
status and OpenAI's error object naming the field, while a normal greedy request sent at the same
time still gets its reference text. Then a tiny queue overflowing (429), slow and stalled clients."""

import json
import socket
import threading
import time

import httpx
import pytest

from conftest import (
    BODY_LIMIT_PROBE_BYTES, CTX_SIZE, HOST, METRIC_GENERATED, METRIC_RUNNING, SLOW_CLIENT_CUTOFF_S, SMALL_QUEUE_ARGS,
    STALLED_READER_RELEASE_S, STATUS_INVALID, STATUS_UNKNOWN_MODEL, Concurrent, assert_error,
    assert_error_object, check_reference, metric, raw_request, response_json, start_server,
    stop_and_check,
)

CHAT = "/v1/chat/completions"
COMP = "/v1/completions"
USER = [{"role": "user", "content": "Say hi."}]
LONG_TEXT = "cabbage " * (CTX_SIZE + 200)  # one token a word: past the context


def chat(**fields):
    """A chat body with the served model (filled in by the test), fields overridden or removed (None)."""
    body = {"model": "$MODEL", "messages": USER, "max_tokens": 4, **fields}
    return {k: v for k, v in body.items() if v is not None}


def comp(**fields):
    body = {"model": "$MODEL", "prompt": "Hello", "max_tokens": 4, **fields}
    return {k: v for k, v in body.items() if v is not None}


# (id, path, body, status, names: the message must name one of them)
CASES = [
    ("malformed_json", CHAT, b'{"model": "$MODEL", "messages": [', STATUS_INVALID, ["json"]),
    ("invalid_utf8", CHAT, b'{"model": "$MODEL", "messages": [{"role": "user", "content": "\xff\xfe caf\xe9"}]}',
     STATUS_INVALID, ["utf-8", "utf8"]),
    ("body_not_an_object", CHAT, b'[1, 2, 3]', STATUS_INVALID, ["object", "map"]),
    ("temperature_string", CHAT, chat(temperature="hot"), STATUS_INVALID, ["temperature"]),
    ("messages_string", CHAT, chat(messages="hi"), STATUS_INVALID, ["messages"]),
    ("max_tokens_string", CHAT, chat(max_tokens="ten"), STATUS_INVALID, ["max_tokens"]),
    ("stream_string", CHAT, chat(stream="yes"), STATUS_INVALID, ["stream"]),
    ("stop_number", CHAT, chat(stop=5), STATUS_INVALID, ["stop"]),
    ("content_number", CHAT, chat(messages=[{"role": "user", "content": 5}]), STATUS_INVALID, ["content"]),
    ("prompt_object", COMP, comp(prompt={"text": "hi"}), STATUS_INVALID, ["prompt"]),
    ("messages_missing", CHAT, chat(messages=None), STATUS_INVALID, ["messages"]),
    ("messages_empty", CHAT, chat(messages=[]), STATUS_INVALID, ["messages"]),
    ("prompt_missing", COMP, comp(prompt=None), STATUS_INVALID, ["prompt"]),
    ("prompt_empty_string", COMP, comp(prompt=""), STATUS_INVALID, ["prompt"]),
    ("prompt_empty_ids", COMP, comp(prompt=[]), STATUS_INVALID, ["prompt"]),
    ("role_unknown", CHAT, chat(messages=[{"role": "wizard", "content": "hi"}]), STATUS_INVALID, ["role"]),
    ("content_missing", CHAT, chat(messages=[{"role": "user"}]), STATUS_INVALID, ["content"]),
    ("model_unknown_chat", CHAT, chat(model="gpt-9-turbo"), STATUS_UNKNOWN_MODEL, ["gpt-9-turbo"]),
    ("model_unknown_completion", COMP, comp(model="gpt-9-turbo"), STATUS_UNKNOWN_MODEL, ["gpt-9-turbo"]),
    ("prompt_over_context", COMP, comp(prompt=LONG_TEXT), STATUS_INVALID, ["context", "prompt"]),
    ("messages_over_context", CHAT, chat(messages=[{"role": "user", "content": LONG_TEXT}]), STATUS_INVALID,
     ["context", "messages"]),
    ("prompt_ids_over_context", COMP, comp(prompt=[9707] * (CTX_SIZE + 10)), STATUS_INVALID, ["context", "prompt"]),
    ("max_tokens_zero", CHAT, chat(max_tokens=0), STATUS_INVALID, ["max_tokens"]),
    ("max_tokens_negative", CHAT, chat(max_tokens=-5), STATUS_INVALID, ["max_tokens"]),
    ("max_tokens_beyond_context", CHAT, chat(max_tokens=4 * CTX_SIZE), STATUS_INVALID, ["max_tokens", "context"]),
    ("max_completion_tokens_zero", CHAT, chat(max_tokens=None, max_completion_tokens=0), STATUS_INVALID,
     ["max_completion_tokens"]),
    ("completion_max_tokens_negative", COMP, comp(max_tokens=-1), STATUS_INVALID, ["max_tokens"]),
    ("temperature_negative", CHAT, chat(temperature=-0.1), STATUS_INVALID, ["temperature"]),
    ("temperature_over_2", CHAT, chat(temperature=2.5), STATUS_INVALID, ["temperature"]),
    ("top_p_zero", CHAT, chat(top_p=0), STATUS_INVALID, ["top_p"]),
    ("top_p_over_1", CHAT, chat(top_p=1.5), STATUS_INVALID, ["top_p"]),
    ("completion_top_p_negative", COMP, comp(top_p=-0.5), STATUS_INVALID, ["top_p"]),
    ("n_zero", CHAT, chat(n=0), STATUS_INVALID, ["n"]),
    ("n_nine", CHAT, chat(n=9), STATUS_INVALID, ["n"]),
    ("completion_n_nine", COMP, comp(n=9), STATUS_INVALID, ["n"]),
    ("top_logprobs_over_20", CHAT, chat(logprobs=True, top_logprobs=21), STATUS_INVALID, ["top_logprobs"]),
    ("token_id_beyond_vocab", COMP, comp(prompt=[9707, 10_000_000]), STATUS_INVALID, ["prompt", "token"]),
    ("token_id_negative", COMP, comp(prompt=[9707, -3]), STATUS_INVALID, ["prompt", "token"]),
    ("token_id_beyond_vocab_in_list", COMP, comp(prompt=[[9707], [9707, 999_999]]), STATUS_INVALID, ["prompt", "token"]),
    ("suffix_refused", COMP, comp(suffix="return x"), STATUS_INVALID, ["suffix"]),
]


def fill_model(body, model):
    if isinstance(body, dict):
        return json.dumps(body).replace('"$MODEL"', json.dumps(model)).encode()
    return body.replace(b"$MODEL", model.encode())


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_request_body(server, reference, case):
    _, path, body, status, names = case
    with Concurrent(server, reference):
        r = server.post(path, fill_model(body, server.model))
        assert_error(r, status, names)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_bad_request_streaming_gets_error_not_stream(server, reference, stream):
    """Validation happens before the stream starts: a bad streaming request gets a 4xx JSON error."""
    with Concurrent(server, reference):
        r = server.post(CHAT, fill_model(chat(temperature=-1, stream=stream), server.model))
        assert_error(r, STATUS_INVALID, ["temperature"])


@pytest.mark.parametrize("method,path,status,names", [
    ("GET", CHAT, 405, ["method", "get"]),
    ("PUT", COMP, 405, ["method", "put"]),
    ("DELETE", "/v1/models", 405, ["method", "delete"]),
    ("POST", "/v1/nothing-here", 404, ["/v1/nothing-here", "not found"]),
    ("GET", "/nothing-here", 404, ["/nothing-here", "not found"]),
], ids=["get_chat", "put_completions", "delete_models", "unknown_v1_path", "unknown_path"])
def test_wrong_method_and_unknown_path(server, reference, method, path, status, names):
    with Concurrent(server, reference):
        r = httpx.request(method, server.base + path, headers=server.headers(), timeout=30)
        assert_error(r, status, names)


def test_body_over_size_limit(server, reference):
    body = b'{"model": "x", "prompt": "' + b"a" * BODY_LIMIT_PROBE_BYTES + b'"}'
    head = (f"POST {COMP} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {server.api_key}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    with Concurrent(server, reference):
        status, raw = raw_request(server.port, head, body, timeout=60)
        assert status == 413, f"expected 413, got {status}: {raw[:300]!r}"
        assert_error_object(response_json(raw), ["size", "large", "limit", "bytes"])
    # without Content-Length (chunked), the limit holds too
    def chunks():
        yield b'{"model": "x", "prompt": "'
        for _ in range(BODY_LIMIT_PROBE_BYTES >> 20):
            yield b"a" * (1 << 20)
        yield b'"}'
    try:
        r = httpx.post(server.base + COMP, content=chunks(), headers={**server.headers(), "Content-Type": "application/json"}, timeout=60)
        assert_error(r, 413, ["size", "large", "limit", "bytes"])
    except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
        pass  # the server answered and closed while the body was still being sent
    check_reference(server, reference)


def test_queue_overflow_gets_429_with_retry_after():
    """--max-seqs 1 --max-queue 2: of 12 requests at once, three are taken, the rest get 429."""
    s = start_server("small-queue", SMALL_QUEUE_ARGS)
    try:
        body = {"model": s.model, "messages": [{"role": "user", "content": "Count from 1 to 20."}],
                "max_tokens": 24, "temperature": 0}
        ref = s.chat(body)["choices"][0]["message"]["content"]
        results = [None] * 12

        def one(i):
            results[i] = s.post(CHAT, body)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(results))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        statuses = [r.status_code for r in results]
        assert set(statuses) <= {200, 429}, statuses
        assert statuses.count(429) >= 1, f"no 429 among {statuses}"
        assert statuses.count(200) >= 3, f"fewer than max-seqs + max-queue served: {statuses}"
        for r in results:
            if r.status_code == 429:
                assert_error(r, 429, ["queue", "busy", "capacity", "overloaded"])
                assert r.headers.get("retry-after", "").strip().isdigit(), f"Retry-After: {r.headers.get('retry-after')!r}"
            else:
                assert r.json()["choices"][0]["message"]["content"] == ref
        # the queue drained: the next request is served
        assert s.chat(body)["choices"][0]["message"]["content"] == ref
    finally:
        stop_and_check(s)


def trickle(port, prefix, payload, limit_s):
    """Send `prefix`, then `payload` a byte a second until the server answers or closes; returns
    (the answer's first bytes, b"" when closed, or None when never cut off; seconds it took)."""
    s = socket.create_connection((HOST, port), timeout=10)
    start = time.monotonic()
    try:
        s.sendall(prefix)
        for i in range(len(payload)):
            s.settimeout(1.0)
            try:
                return s.recv(4096), time.monotonic() - start  # answered, or b"": closed
            except socket.timeout:
                pass
            if time.monotonic() - start > limit_s:
                break
            s.send(payload[i:i + 1])
        return None, time.monotonic() - start
    except (ConnectionResetError, BrokenPipeError):
        return b"", time.monotonic() - start
    finally:
        s.close()


@pytest.mark.parametrize("part", ["headers", "body"])
def test_slow_client_is_cut_off(server, reference, part):
    """Headers or a body sent a byte a second are cut off (408 or the connection closed) within
    SLOW_CLIENT_CUTOFF_S, while other requests are served meanwhile."""
    # trailing spaces are valid JSON and make the body longer to trickle than the cut-off
    body = json.dumps({"model": server.model, "messages": USER, "max_tokens": 4}).encode() + b" " * SLOW_CLIENT_CUTOFF_S
    head = (f"POST {CHAT} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {server.api_key}\r\nContent-Length: {len(body)}\r\n").encode()
    padding = b"X-Padding: " + b"p" * 100 + b"\r\n"  # longer to trickle than the cut-off
    if part == "headers":
        prefix, payload = b"", head + padding + b"\r\n" + body
    else:
        prefix, payload = head + b"\r\n", body
    outcome = {}
    t = threading.Thread(target=lambda: outcome.update(r=trickle(server.port, prefix, payload, SLOW_CLIENT_CUTOFF_S + 5)),
                         daemon=True)
    t.start()
    for _ in range(3):  # served while the slow client trickles
        check_reference(server, reference)
    t.join(SLOW_CLIENT_CUTOFF_S + 30)
    resp, after = outcome["r"]
    assert resp is not None, f"still sending after {after:.0f} s: never cut off"
    assert after <= SLOW_CLIENT_CUTOFF_S + 2, f"cut off only after {after:.0f} s"
    if resp:
        assert resp.startswith((b"HTTP/1.1 408", b"HTTP/1.0 408")), f"slow {part} answered with {resp[:200]!r}"
    check_reference(server, reference)


def test_stalled_stream_reader_does_not_stall_others(server, reference):
    """Two streams whose clients never read (a tiny receive window) do not hold up other requests,
    and are dropped (--stall-timeout) long before their max_tokens: their decode slots come back."""
    max_tokens = 1500
    # top_logprobs makes each chunk a few KiB, so the socket buffers fill after a few dozen tokens
    body = json.dumps({"model": server.model, "stream": True, "max_tokens": max_tokens, "temperature": 0,
                       "ignore_eos": True, "logprobs": True, "top_logprobs": 20,
                       "messages": [{"role": "user", "content": "Count from 1 to 1000, one number per line."}]}).encode()
    head = (f"POST {CHAT} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {server.api_key}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    generated_before = metric(server.metrics(), METRIC_GENERATED)
    socks = []
    for _ in range(2):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)  # before connect: a small window
        s.connect((HOST, server.port))
        s.sendall(head + body)
        socks.append(s)
    try:
        time.sleep(1)  # the stalled streams are running and filling their buffers
        t0 = time.monotonic()
        for _ in range(3):
            check_reference(server, reference)
        assert time.monotonic() - t0 < 60, "normal requests slowed to a crawl by stalled readers"
        deadline = time.monotonic() + STALLED_READER_RELEASE_S
        while metric(server.metrics(), METRIC_RUNNING) > 0:
            assert time.monotonic() < deadline, f"stalled streams still hold decode slots after {STALLED_READER_RELEASE_S} s"
            time.sleep(0.5)
        generated = metric(server.metrics(), METRIC_GENERATED) - generated_before
        assert generated < 2 * max_tokens, f"stalled streams were not dropped: {generated:.0f} tokens generated"
    finally:
        for s in socks:
            s.close()
    check_reference(server, reference)
