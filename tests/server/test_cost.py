"""Energy and cost in each response's `usage` (extra fields the official openai client keeps) and
in /metrics (issue 11, item 3)."""

from conftest import metric


def check_usage(usage):
    extra = usage.model_extra or {}
    assert extra["energy_joules"] > 0, extra
    assert extra["energy_source"] in ("rapl", "estimate"), extra
    assert extra["cost"] > 0 and extra["currency"] == "CNY", extra


def test_usage_carries_energy_and_cost_in_json_and_the_last_stream_chunk(server, client):
    r = client.chat.completions.create(model=server.model, max_tokens=8, temperature=0,
                                       messages=[{"role": "user", "content": "Say hi."}])
    check_usage(r.usage)
    # The openai client parses the extra fields as attributes too.
    assert r.usage.energy_joules == r.usage.model_extra["energy_joules"]
    chunks = list(client.chat.completions.create(
        model=server.model, max_tokens=8, temperature=0, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "Say hi."}]))
    assert chunks[-1].usage is not None and not chunks[-1].choices
    check_usage(chunks[-1].usage)
    c = client.completions.create(model=server.model, prompt="Hello", max_tokens=4, temperature=0)
    check_usage(c.usage)


def test_metrics_have_joules_and_cost_counters_and_a_joules_per_token_gauge(server, client):
    client.chat.completions.create(model=server.model, max_tokens=4, messages=[{"role": "user", "content": "Hi"}])
    m = server.metrics()
    joules = metric(m, "baicai_energy_joules_total")
    cost = metric(m, "baicai_cost_total")
    per_token = metric(m, "baicai_energy_joules_per_token")
    assert joules > 0 and cost > 0 and per_token > 0, (joules, cost, per_token)
    assert any(k.startswith(f'baicai_energy_joules_total{{model="{server.model}"') for k in m), sorted(m)
    assert any(k.startswith(f'baicai_cost_total{{model="{server.model}",currency="CNY"') for k in m), sorted(m)
