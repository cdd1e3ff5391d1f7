"""SIGTERM and SIGINT: stop accepting, end in-flight streams cleanly ([DONE] or a clean close),
exit 0."""

import signal
import threading
import time

import httpx

from conftest import SHUTDOWN_GRACE_S, SHUTDOWN_TIMEOUT_S, read_sse, start_server


def test_sigterm_ends_inflight_stream_cleanly_and_exits_0():
    """The stream is longer than the grace period, so the server has to end it, not finish it."""
    s = start_server("sigterm", ["--shutdown-timeout", str(SHUTDOWN_GRACE_S)])
    body = {"model": s.model, "stream": True, "max_tokens": 1500, "temperature": 0, "ignore_eos": True,
            "messages": [{"role": "user", "content": "Count from 1 to 2000, one number per line."}]}
    lines, error = [], None
    started = threading.Event()

    def read():
        nonlocal error
        try:
            with httpx.stream("POST", s.base + "/v1/chat/completions", json=body, timeout=60) as r:
                assert r.status_code == 200, r.status_code
                for line in r.iter_lines():
                    lines.append(line)
                    if sum(l.startswith("data: ") for l in lines) >= 3:
                        started.set()
        except Exception as e:  # an unclean end: reported below
            error = e
        finally:
            started.set()

    t = threading.Thread(target=read, daemon=True)
    t.start()
    assert started.wait(60), "the stream never started"
    assert error is None, f"stream failed before SIGTERM: {error!r}"
    s.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    # no new work is accepted once shutting down
    try:
        r = httpx.post(s.base + "/v1/chat/completions", timeout=10, json={**body, "stream": False, "max_tokens": 2})
        assert r.status_code != 200, "a new request was served after SIGTERM"
    except httpx.TransportError:
        pass
    t.join(SHUTDOWN_TIMEOUT_S)
    assert not t.is_alive(), f"the in-flight stream was still open {SHUTDOWN_TIMEOUT_S} s after SIGTERM"
    assert error is None, f"the in-flight stream ended uncleanly: {error!r}"
    chunks, done = read_sse(lines)  # every event well formed
    assert chunks, "no chunk before the end"
    rc = s.stop()
    assert rc == 0, f"exit status {rc} after SIGTERM:\n{s.tail()}"


def test_sigint_exits_0():
    s = start_server("sigint")
    s.proc.send_signal(signal.SIGINT)
    try:
        rc = s.proc.wait(SHUTDOWN_TIMEOUT_S)
    finally:
        s.stop()
    assert rc == 0, f"exit status {rc} after SIGINT:\n{s.tail()}"
