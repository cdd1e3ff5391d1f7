"""Tool calls with the official openai client: a get-the-weather round trip (the model calls the
tool, the client answers, the model uses the answer), plain and streamed; forced and named calls;
bad tool definitions and choices (a 400 naming the fault, the server still serving); a model
whose template has no tool syntax (Gemma 3) refuses tools with a 400."""

import json

import pytest

from conftest import STATUS_INVALID, Concurrent, assert_error

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city name"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Get the local time in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
QUESTION = [
    {"role": "system", "content": "You are a weather assistant. After a tool result arrives, answer the user in one short sentence."},
    {"role": "user", "content": "What is the weather like in Paris today?"},
]
WEATHER_RESULT = {"city": "Paris", "temperature_c": 23, "condition": "sunny"}


def streamed_calls(stream):
    """Assembles a stream's tool-call deltas as OpenAI clients do; returns (calls, finish_reason, content)."""
    calls, finish, content = {}, None, ""
    for chunk in stream:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        content += choice.delta.content or ""
        for d in choice.delta.tool_calls or []:
            c = calls.setdefault(d.index, {"id": None, "name": "", "arguments": ""})
            if d.id:
                assert c["id"] is None, f"second id for call {d.index}"
                c["id"] = d.id
                assert d.type == "function"
            if d.function and d.function.name:
                c["name"] += d.function.name
            if d.function and d.function.arguments:
                c["arguments"] += d.function.arguments
        finish = choice.finish_reason or finish
    return [calls[i] for i in sorted(calls)], finish, content


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_weather_round_trip(client, server, stream):
    args = dict(model=server.model, messages=QUESTION, tools=[WEATHER, TIME], tool_choice="required",
                parallel_tool_calls=False, temperature=0, max_tokens=100)
    if stream:
        calls, finish, _ = streamed_calls(client.chat.completions.create(stream=True, **args))
    else:
        r = client.chat.completions.create(**args)
        msg = r.choices[0].message
        finish = r.choices[0].finish_reason
        calls = [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments} for c in msg.tool_calls or []]
        assert not msg.content, f"content beside the call: {msg.content!r}"
    assert finish == "tool_calls", finish
    assert len(calls) == 1, calls
    call = calls[0]
    assert call["id"] and call["name"] == "get_weather", call
    arguments = json.loads(call["arguments"])
    assert "paris" in arguments["city"].lower(), arguments
    assert arguments.get("unit", "celsius") in ("celsius", "fahrenheit")

    # The client runs the tool and sends the result back; the model answers from it.
    follow = QUESTION + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call["id"], "type": "function", "function": {"name": call["name"], "arguments": call["arguments"]}}]},
        {"role": "tool", "tool_call_id": call["id"], "content": json.dumps(WEATHER_RESULT)},
    ]
    args = dict(model=server.model, messages=follow, tools=[WEATHER, TIME], tool_choice="none",
                temperature=0, max_tokens=100)
    if stream:
        calls, finish, answer = streamed_calls(client.chat.completions.create(stream=True, **args))
        assert not calls
    else:
        r = client.chat.completions.create(**args)
        answer, finish = r.choices[0].message.content, r.choices[0].finish_reason
        assert not r.choices[0].message.tool_calls
    assert finish in ("stop", "length"), finish
    assert "23" in answer or "sunny" in answer.lower(), f"the answer does not use the tool's result: {answer!r}"


def test_named_choice_calls_that_function(client, server):
    r = client.chat.completions.create(
        model=server.model, messages=QUESTION, tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}}, temperature=0, max_tokens=60)
    calls = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "tool_calls"
    assert [c.function.name for c in calls] == ["get_time"]
    assert isinstance(json.loads(calls[0].function.arguments)["city"], str)


def test_forced_calls_always_parse_at_temperature(client, server):
    """Sampled calls (temperature 1) still follow the parameter schema: the grammar forbids the rest."""
    for seed in range(3):
        r = client.chat.completions.create(
            model=server.model, messages=QUESTION, tools=[WEATHER], tool_choice="required",
            parallel_tool_calls=False, temperature=1.0, seed=seed, max_tokens=120)
        calls = r.choices[0].message.tool_calls
        assert r.choices[0].finish_reason == "tool_calls", r.choices[0]
        args = json.loads(calls[0].function.arguments)
        assert isinstance(args["city"], str) and set(args) <= {"city", "unit"}, args
        assert args.get("unit", "celsius") in ("celsius", "fahrenheit"), args


def chat(**fields):
    return {"model": "$MODEL", "messages": QUESTION, "max_tokens": 8, **fields}


BAD = [
    ("tool_without_function", chat(tools=[{"type": "function"}]), ["tools[0].function"]),
    ("tool_type_unknown", chat(tools=[{"type": "retrieval", "function": {"name": "x"}}]), ["tools[0].type"]),
    ("tool_name_missing", chat(tools=[{"type": "function", "function": {"description": "no name"}}]),
     ["tools[0].function.name"]),
    ("tool_name_bad", chat(tools=[{"type": "function", "function": {"name": "get weather!"}}]), ["get weather!"]),
    ("tool_parameters_not_schema", chat(tools=[{"type": "function", "function": {"name": "f", "parameters": "city"}}]),
     ["tools[0].function.parameters"]),
    ("tools_not_a_list", chat(tools={"type": "function"}), ["tools"]),
    ("tool_choice_missing_function", chat(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_stock_price"}}),
     ["get_stock_price"]),
    ("tool_choice_unknown_mode", chat(tools=[WEATHER], tool_choice="sometimes"), ["sometimes"]),
    ("tool_choice_without_tools", chat(tool_choice="required"), ["tool_choice"]),
    ("tool_schema_not_compiling", chat(tools=[{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": "string", "pattern": "(?<=a)b"}}}}}], tool_choice="required"),
     ["look-around"]),
    ("tool_message_unknown_role", chat(messages=[{"role": "function", "content": "x"}]), ["function"]),
]


@pytest.mark.parametrize("body,names", [(b, n) for _, b, n in BAD], ids=[c[0] for c in BAD])
def test_bad_tool_input_is_a_400_naming_it(server, reference, body, names):
    body = {**body, "model": server.model}
    with Concurrent(server, reference):
        assert_error(server.post("/v1/chat/completions", body), STATUS_INVALID, names)
    assert server.alive()


def test_model_without_tool_syntax_refuses_tools(gemma):
    r = gemma.post("/v1/chat/completions", {"messages": QUESTION, "tools": [WEATHER], "max_tokens": 4})
    err = assert_error(r, STATUS_INVALID, ["cannot call tools"])
    assert err["param"] == "tools"
    # The same request without tools is served.
    assert gemma.chat({"messages": QUESTION, "max_tokens": 4})["choices"][0]["finish_reason"] in ("stop", "length")
