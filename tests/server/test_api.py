"""The official `openai` client against `baicai serve`: chat and completions, streaming and not,
usage, logprobs, n, stop strings, seeds, the API key, /v1/models."""

import json
import math
import subprocess

import httpx
import openai
import pytest

from conftest import API_KEY, BAICAI, MODEL, assert_error

CHAT = [{"role": "user", "content": "Write a haiku about cabbages."}]
CODE_PROMPT = "def fibonacci(n):\n    "


def chat_text(client, server, **kw):
    r = client.chat.completions.create(model=server.model, messages=kw.pop("messages", CHAT), **kw)
    return r.choices[0].message.content, r


def stream_chat(client, server, **kw):
    """(text per choice index, chunks) of a streamed chat completion."""
    chunks = list(client.chat.completions.create(model=server.model, messages=kw.pop("messages", CHAT), stream=True, **kw))
    texts = {}
    for c in chunks:
        for ch in c.choices:
            texts[ch.index] = texts.get(ch.index, "") + (ch.delta.content or "")
    return texts, chunks


def stream_completion(client, server, **kw):
    chunks = list(client.completions.create(model=server.model, stream=True, **kw))
    texts = {}
    for c in chunks:
        for ch in c.choices:
            texts[ch.index] = texts.get(ch.index, "") + ch.text
    return texts, chunks


def token_counts(usage):
    """The token counts of a usage object. Its energy and cost are measured per run, and its
    cached prompt tokens depend on what ran before (the prefix cache), so a streamed and a plain
    run of the same request may differ there."""
    d = usage.model_dump()
    return {k: d[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")}


def finish_reasons(chunks):
    return [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason]


def check_usage(usage, max_tokens=None, finish=None):
    assert usage.prompt_tokens > 0
    assert usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    if finish == "length":
        assert usage.completion_tokens == max_tokens
    elif max_tokens is not None:
        assert usage.completion_tokens <= max_tokens


def test_models_lists_the_served_model(client, server):
    models = client.models.list().data
    assert [m.id for m in models] == [server.model]
    assert models[0].object == "model"
    assert server.model, "empty model id"


def test_chat_completion_fields_and_usage(client, server):
    text, r = chat_text(client, server, max_tokens=8, temperature=0)
    assert r.object == "chat.completion"
    assert r.id and r.created > 0 and r.model == server.model
    assert len(r.choices) == 1 and r.choices[0].index == 0
    assert r.choices[0].message.role == "assistant" and text
    assert r.choices[0].finish_reason in ("stop", "length")
    check_usage(r.usage, 8, r.choices[0].finish_reason)


def test_max_tokens_ends_with_length(client, server):
    _, r = chat_text(client, server, max_tokens=3, temperature=0)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 3
    _, r = chat_text(client, server, max_completion_tokens=5, temperature=0)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 5


def test_chat_greedy_stream_equals_non_stream(client, server):
    text, r = chat_text(client, server, max_tokens=24, temperature=0)
    texts, chunks = stream_chat(client, server, max_tokens=24, temperature=0, stream_options={"include_usage": True})
    assert texts == {0: text}
    assert {c.id for c in chunks} == {chunks[0].id}
    assert all(c.object == "chat.completion.chunk" and c.model == server.model for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert finish_reasons(chunks) == [r.choices[0].finish_reason]
    # include_usage: a last chunk with no choices carries the usage, the same as non-streamed
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert all(c.usage is None for c in chunks[:-1])
    assert token_counts(chunks[-1].usage) == token_counts(r.usage)


def test_completion_greedy_stream_equals_non_stream(client, server):
    r = client.completions.create(model=server.model, prompt=CODE_PROMPT, max_tokens=24, temperature=0)
    assert r.object == "text_completion" and r.model == server.model and r.id
    assert r.choices[0].text and r.choices[0].finish_reason in ("stop", "length")
    check_usage(r.usage, 24, r.choices[0].finish_reason)
    texts, chunks = stream_completion(client, server, prompt=CODE_PROMPT, max_tokens=24, temperature=0,
                                      stream_options={"include_usage": True})
    assert texts == {0: r.choices[0].text}
    assert finish_reasons(chunks) == [r.choices[0].finish_reason]
    assert token_counts(chunks[-1].usage) == token_counts(r.usage)


def tokenize(text):
    out = subprocess.run([str(BAICAI), "tokenize", "-m", str(MODEL), text], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def test_completion_of_token_ids_equals_completion_of_text(client, server):
    ids = tokenize(CODE_PROMPT)
    by_text = client.completions.create(model=server.model, prompt=CODE_PROMPT, max_tokens=12, temperature=0)
    by_ids = client.completions.create(model=server.model, prompt=ids, max_tokens=12, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text
    assert by_ids.usage.prompt_tokens == len(ids)
    # a list of prompts (texts, or token-id arrays): one choice each, in order
    other = "The capital of France is"
    alone = client.completions.create(model=server.model, prompt=other, max_tokens=12, temperature=0)
    for prompts in ([CODE_PROMPT, other], [ids, tokenize(other)]):
        both = client.completions.create(model=server.model, prompt=prompts, max_tokens=12, temperature=0)
        assert [c.index for c in both.choices] == [0, 1]
        assert [c.text for c in both.choices] == [by_text.choices[0].text, alone.choices[0].text]


def test_completion_echo(client, server):
    r = client.completions.create(model=server.model, prompt=CODE_PROMPT, max_tokens=6, temperature=0, echo=True)
    plain = client.completions.create(model=server.model, prompt=CODE_PROMPT, max_tokens=6, temperature=0)
    assert r.choices[0].text == CODE_PROMPT + plain.choices[0].text


def test_chat_text_parts_and_system_message(client, server):
    as_string, _ = chat_text(client, server, max_tokens=10, temperature=0)
    as_parts, _ = chat_text(client, server, max_tokens=10, temperature=0,
                            messages=[{"role": "user", "content": [{"type": "text", "text": CHAT[0]["content"]}]}])
    assert as_parts == as_string
    text, r = chat_text(client, server, max_tokens=10, temperature=0, messages=[
        {"role": "system", "content": "You answer in French."},
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": "Bonjour !"},
        {"role": "user", "content": "How are you?"},
    ])
    assert text and r.usage.prompt_tokens > 20


def test_chat_logprobs(client, server):
    r = client.chat.completions.create(model=server.model, messages=CHAT, max_tokens=10, temperature=0,
                                       logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert "".join(t.token for t in content) == r.choices[0].message.content
    for t in content:
        assert t.logprob <= 0 and math.isfinite(t.logprob)
        assert t.bytes == list(t.token.encode())
        assert len(t.top_logprobs) == 3
        tops = [x.logprob for x in t.top_logprobs]
        assert tops == sorted(tops, reverse=True)
        # greedy: the chosen token is the most likely one
        assert t.top_logprobs[0].token == t.token
        assert t.top_logprobs[0].logprob == pytest.approx(t.logprob, abs=1e-5)
    # streamed: the same tokens and values
    chunks = list(client.chat.completions.create(model=server.model, messages=CHAT, max_tokens=10, temperature=0,
                                                 logprobs=True, top_logprobs=3, stream=True))
    streamed = [t for c in chunks for ch in c.choices if ch.logprobs for t in ch.logprobs.content]
    assert [(t.token, round(t.logprob, 4)) for t in streamed] == [(t.token, round(t.logprob, 4)) for t in content]


def test_completion_logprobs(client, server):
    r = client.completions.create(model=server.model, prompt=CODE_PROMPT, max_tokens=10, temperature=0, logprobs=2)
    lp = r.choices[0].logprobs
    n = r.usage.completion_tokens
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == n
    assert "".join(lp.tokens) == r.choices[0].text
    assert all(x <= 0 for x in lp.token_logprobs)
    assert lp.text_offset == sorted(lp.text_offset)
    for tok, chosen, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert len(top) == 2
        assert max(top.values()) == pytest.approx(chosen, abs=1e-5), (tok, top)


def test_n_choices(client, server):
    r = client.chat.completions.create(model=server.model, messages=CHAT, max_tokens=12, temperature=1.0, n=3)
    assert sorted(c.index for c in r.choices) == [0, 1, 2]
    assert all(c.message.content for c in r.choices)
    assert r.usage.completion_tokens <= 3 * 12
    r = client.completions.create(model=server.model, prompt=CODE_PROMPT, max_tokens=8, temperature=1.0, n=3)
    assert sorted(c.index for c in r.choices) == [0, 1, 2]
    texts, chunks = stream_chat(client, server, max_tokens=8, temperature=1.0, n=3)
    assert sorted(texts) == [0, 1, 2] and all(texts.values())
    assert len(finish_reasons(chunks)) == 3


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_stop_string_chat(client, server, stream):
    full, _ = chat_text(client, server, max_tokens=32, temperature=0)
    stop = full[len(full) // 2: len(full) // 2 + 3]  # a piece from the middle, likely across tokens
    assert stop.strip(), f"no usable stop string in {full!r}"
    expected = full[: full.index(stop)]
    if stream:
        texts, chunks = stream_chat(client, server, max_tokens=32, temperature=0, stop=[stop, "never-appears"])
        text, reasons = texts.get(0, ""), finish_reasons(chunks)
    else:
        text, r = chat_text(client, server, max_tokens=32, temperature=0, stop=stop)
        reasons = [r.choices[0].finish_reason]
    assert stop not in text
    assert text == expected
    assert reasons == ["stop"]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_stop_string_completion(client, server, stream):
    full = client.completions.create(model=server.model, prompt=CODE_PROMPT, max_tokens=32, temperature=0).choices[0].text
    stop = full[len(full) // 2: len(full) // 2 + 2]
    assert stop.strip(), f"no usable stop string in {full!r}"
    if stream:
        texts, chunks = stream_completion(client, server, prompt=CODE_PROMPT, max_tokens=32, temperature=0, stop=[stop])
        text, reasons = texts.get(0, ""), finish_reasons(chunks)
    else:
        r = client.completions.create(model=server.model, prompt=CODE_PROMPT, max_tokens=32, temperature=0, stop=[stop])
        text, reasons = r.choices[0].text, [r.choices[0].finish_reason]
    assert stop not in text and text == full[: full.index(stop)]
    assert reasons == ["stop"]


def test_seed_reproducible(client, server):
    kw = dict(max_tokens=24, temperature=0.8, seed=1234)
    a, _ = chat_text(client, server, **kw)
    b, _ = chat_text(client, server, **kw)
    assert a == b
    c = client.completions.create(model=server.model, prompt=CODE_PROMPT, top_p=0.9, **kw).choices[0].text
    d = client.completions.create(model=server.model, prompt=CODE_PROMPT, top_p=0.9, **kw).choices[0].text
    assert c == d
    # the seed is used: other seeds give other samples (three tries, all equal would be a bug)
    others = {chat_text(client, server, **{**kw, "seed": s})[0] for s in (1, 2, 3)}
    assert others != {a}


def test_api_key_required(server):
    body = {"model": server.model, "messages": CHAT, "max_tokens": 2}
    for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": API_KEY}):
        r = httpx.post(server.base + "/v1/chat/completions", json=body, headers=headers, timeout=30)
        assert_error(r, 401, ["key", "auth"])
    r = httpx.get(server.base + "/v1/models", timeout=30)
    assert_error(r, 401, ["key", "auth"])
    bad = openai.OpenAI(base_url=server.base + "/v1", api_key="wrong-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model=server.model, messages=CHAT, max_tokens=2)
    # /health and /metrics stay open
    assert httpx.get(server.base + "/health", timeout=30).status_code == 200
    m = httpx.get(server.base + "/metrics", timeout=30)
    assert m.status_code == 200 and "# TYPE" in m.text
