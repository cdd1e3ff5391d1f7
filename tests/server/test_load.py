"""Bounded load on loopback: 32 concurrent streaming clients, 200 chat requests of six prompts,
10% cancelled mid-stream. Zero 5xx, every finished stream well formed and equal to the prompt's
single-request greedy output, no sequence or KV block left behind, RSS back near its baseline."""

import asyncio
import time

import httpx

from conftest import (
    METRIC_KV_USED, METRIC_PREFIX_CACHED, METRIC_RUNNING, METRIC_WAITING, REQUEST_TIMEOUT_S, metric, read_sse,
)

CLIENTS = 32
REQUESTS = 200
CANCEL_EVERY = 10  # request i is cancelled when i % CANCEL_EVERY == 3: 10%
CANCEL_AFTER_CHUNKS = 3
MAX_TOKENS = 32
SETTLE_S = 15  # after the load: running sequences must reach 0 within this
KV_SLACK_BLOCKS = 6  # prefix-cache blocks that may differ from the warm-up's (one per prompt)
RSS_SLACK = (1.20, 64 * 1024)  # after ≤ baseline × 1.20 + 64 MiB (KiB)

PASSAGE = (
    "Cabbage is a leafy green, red, or white biennial plant grown as an annual vegetable crop for "
    "its dense-leaved heads. It is descended from the wild cabbage and belongs to the cole crops, "
    "meaning it is closely related to broccoli, cauliflower, Brussels sprouts and kale. A cabbage "
    "generally weighs between 500 and 1,000 grams. Smooth-leafed, firm-headed green cabbages are "
    "the most common. Cabbages are prepared many different ways for eating; they can be pickled, "
    "fermented, steamed, stewed, sautéed, braised, or eaten raw. "
)
PROMPTS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a Python function that checks whether a number is prime."}],
    [{"role": "user", "content": PASSAGE + "\nSummarize the text above in one sentence."}],
    [{"role": "user", "content": (PASSAGE * 3) + "\nList three ways to prepare cabbage mentioned above."}],
    [{"role": "system", "content": "You are a terse assistant."},
     {"role": "user", "content": "Explain what a KV cache is."},
     {"role": "assistant", "content": "It stores attention keys and values of earlier tokens."},
     {"role": "user", "content": "Why does it save time?"}],
]


def body(server, prompt, stream=True):
    return {"model": server.model, "messages": prompt, "max_tokens": MAX_TOKENS, "temperature": 0, "stream": stream}


async def one_stream(client, server, prompt, cancel):
    """(status, text or None, problem or None) of one streamed request."""
    async with client.stream("POST", "/v1/chat/completions", json=body(server, prompt)) as r:
        if r.status_code != 200:
            await r.aread()
            return r.status_code, None, r.text[:300]
        if r.headers.get("content-type", "").split(";")[0] != "text/event-stream":
            return r.status_code, None, f"content-type {r.headers.get('content-type')!r}"
        lines, data_lines = [], 0
        async for line in r.aiter_lines():
            lines.append(line)
            data_lines += line.startswith("data: ")
            if cancel and data_lines >= CANCEL_AFTER_CHUNKS:
                return 200, None, None  # leaving the block closes the connection mid-stream
    try:
        chunks, done = read_sse(lines)
    except AssertionError as e:
        return 200, None, str(e)
    if not done:
        return 200, None, "stream did not end with data: [DONE]"
    ids = {c.get("id") for c in chunks}
    if len(ids) != 1 or any(c.get("object") != "chat.completion.chunk" for c in chunks):
        return 200, None, f"chunk ids {ids} / objects {[c.get('object') for c in chunks][:3]}"
    finishes = [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch.get("finish_reason")]
    if len(finishes) != 1 or finishes[0] not in ("stop", "length"):
        return 200, None, f"finish reasons {finishes}"
    text = "".join(ch["delta"].get("content") or "" for c in chunks for ch in c["choices"])
    return 200, text, None


async def run_load(server, jobs):
    """Run (prompt index, cancel) jobs on CLIENTS connections at once; results in job order."""
    sem = asyncio.Semaphore(CLIENTS)
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=server.base, headers=server.headers(), limits=limits,
                                 timeout=REQUEST_TIMEOUT_S) as client:
        async def job(p, cancel):
            async with sem:
                try:
                    return await one_stream(client, server, PROMPTS[p], cancel)
                except httpx.HTTPError as e:
                    return None, None, f"{type(e).__name__}: {e}"
        return await asyncio.gather(*(job(p, c) for p, c in jobs))


def settle(server):
    """Metrics once no sequence runs or waits (cancelled ones are freed within a step)."""
    deadline = time.monotonic() + SETTLE_S
    while True:
        m = server.metrics()
        if metric(m, METRIC_RUNNING) == 0 and metric(m, METRIC_WAITING) == 0:
            return m
        assert time.monotonic() < deadline, (
            f"after {SETTLE_S} s: running {metric(m, METRIC_RUNNING)}, waiting {metric(m, METRIC_WAITING)}")
        time.sleep(0.25)


def test_load_32_clients_200_requests(server):
    # single-request greedy outputs, each alone
    refs = [server.chat(body(server, p, stream=False))["choices"][0]["message"]["content"] for p in PROMPTS]
    assert all(refs), refs

    # warm-up: every client once, so the baseline has seen a full batch
    warm = asyncio.run(run_load(server, [(i % len(PROMPTS), False) for i in range(CLIENTS)]))
    assert all(s == 200 and p is None for s, _, p in warm), [w for w in warm if w[2]][:3]
    base = settle(server)
    base_kv, base_rss = metric(base, METRIC_KV_USED), server.rss_kib()

    jobs = [(i % len(PROMPTS), i % CANCEL_EVERY == 3) for i in range(REQUESTS)]
    t0 = time.monotonic()
    results = asyncio.run(run_load(server, jobs))
    elapsed = time.monotonic() - t0

    statuses = [s for s, _, _ in results]
    assert not [s for s in statuses if s is None or s >= 500], f"5xx or transport errors: {[r for r in results if r[0] is None or r[0] >= 500][:5]}"
    assert set(statuses) == {200}, f"statuses {sorted(set(statuses))}"
    problems = [(i, p) for i, (_, _, p) in enumerate(results) if p]
    assert not problems, f"{len(problems)} malformed streams, e.g. {problems[:3]}"
    wrong = [(i, jobs[i][0], t, refs[jobs[i][0]]) for i, (_, t, _) in enumerate(results)
             if not jobs[i][1] and t != refs[jobs[i][0]]]
    assert not wrong, f"{len(wrong)} greedy outputs differ from the single-request ones, e.g. {wrong[:2]}"
    assert server.alive()

    after = settle(server)
    kv = metric(after, METRIC_KV_USED)
    if METRIC_PREFIX_CACHED:
        assert kv - metric(after, METRIC_PREFIX_CACHED) == 0, f"KV blocks leaked: {kv} used"
    assert kv <= base_kv + KV_SLACK_BLOCKS, f"KV blocks used {kv} after the load vs {base_kv} after warm-up"
    rss = server.rss_kib()
    limit = base_rss * RSS_SLACK[0] + RSS_SLACK[1]
    assert rss <= limit, f"RSS {rss // 1024} MiB after the load vs {base_rss // 1024} MiB baseline (limit {limit // 1024:.0f})"
    print(f"\nload: {REQUESTS} requests in {elapsed:.1f} s; RSS {base_rss // 1024} -> {rss // 1024} MiB; "
          f"KV blocks {base_kv:.0f} -> {kv:.0f}")
    # the server is still fine for a plain request
    assert server.chat(body(server, PROMPTS[1], stream=False))["choices"][0]["message"]["content"] == refs[1]
