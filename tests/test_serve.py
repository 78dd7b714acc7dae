"""`rwkv-cpp serve` against live servers on ephemeral 127.0.0.1 ports: the OpenAI endpoints
through the official `openai` client and raw httpx, streamed and not; outputs compared with
`RWKV.completion` on the same prompts; errors, admission, cancellation and shutdown.

The servers run in threads over the small byte-vocabulary v4 model (see serve_helpers.py);
the shutdown test runs `rwkv-cpp serve` as a process and stops it with SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest
from serve_helpers import LiveServer, sse_data, stream_events

from rwkv_cli.core.chat_format import build_prompt

TIMEOUT = 20.0  # any single request; the model answers these in milliseconds
ENDLESS = 10**7  # max_tokens of a completion that would outlive every test's timeout


@pytest.fixture(scope="module")
def server(byte_v4):
    live = LiveServer(byte_v4, parallel=4, queue=16)
    yield live
    live.stop()


@pytest.fixture
def one_slot(byte_v4):
    """A server that runs one completion and queues one more."""
    live = LiveServer(byte_v4, parallel=1, queue=1)
    yield live
    live.stop()


def client_for(live: LiveServer, **kwargs) -> openai.OpenAI:
    kwargs.setdefault("api_key", live.serving.options.api_key or "unused")
    return openai.OpenAI(base_url=live.url + "/v1", max_retries=0, timeout=TIMEOUT, **kwargs)


def expected_completion(live: LiveServer, prompt: str, **options) -> str:
    options.setdefault("temperature", 0)
    return live.model.completion(prompt, **options).completion


def expected_reply(live: LiveServer, messages: list[dict], max_tokens: int) -> str:
    prompt = build_prompt(live.format, messages)
    text = expected_completion(live, prompt, max_tokens=max_tokens, stop=live.format.stop)
    return text.strip()


# ---- the endpoints ----


def test_health_and_models(server):
    health = httpx.get(server.url + "/health", timeout=TIMEOUT)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    models = client_for(server).models.list()
    assert [m.id for m in models.data] == [server.name] == ["bytes-v4-FP32"]
    assert client_for(server).models.retrieve(server.name).id == server.name


def test_completion_greedy_equals_the_library(server):
    prompt = "The dragon said"
    want = expected_completion(server, prompt, max_tokens=24)
    assert len(want) > 10
    result = client_for(server).completions.create(
        model=server.name, prompt=prompt, max_tokens=24, temperature=0
    )
    assert result.choices[0].text == want
    assert result.choices[0].finish_reason == "length"
    assert result.object == "text_completion"
    assert result.usage.completion_tokens == 24
    assert result.usage.prompt_tokens == len(prompt.encode())
    assert result.usage.total_tokens == 24 + len(prompt.encode())

    stream = client_for(server).completions.create(
        model=server.name, prompt=prompt, max_tokens=24, temperature=0, stream=True
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks) == want
    assert [c.choices[0].finish_reason for c in chunks][-1] == "length"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])


def test_completion_stop_string_and_sampling_options(server):
    prompt = "Once upon a time"
    free = expected_completion(server, prompt, max_tokens=30)
    stop = free[8:10]
    want = free[: free.index(stop)]
    result = client_for(server).completions.create(
        model=server.name, prompt=prompt, max_tokens=30, temperature=0, stop=[stop]
    )
    assert result.choices[0].text == want
    assert result.choices[0].finish_reason == "stop"
    # Sampling with a seed is reproducible, and equals the library's with the same options.
    options = {"max_tokens": 20, "temperature": 0.9, "top_p": 0.8, "seed": 7,
               "presence_penalty": 0.5, "frequency_penalty": 0.25}
    want = expected_completion(server, prompt, **options)
    got = client_for(server).completions.create(model=server.name, prompt=prompt, **options)
    assert got.choices[0].text == want


def test_chat_greedy_equals_the_library(server):
    messages = [{"role": "user", "content": "Tell me about dragons."}]
    reply = client_for(server).chat.completions.create(
        model=server.name, messages=messages, max_tokens=30, temperature=0
    )
    want = expected_reply(server, messages, 30)  # after: it caches the prompt
    assert want
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == want
    prompt_tokens = len(build_prompt(server.format, messages).encode())
    assert reply.usage.prompt_tokens == prompt_tokens
    # The preamble's state is kept from the start: a first turn reads only its own text.
    assert reply.usage.prompt_tokens_details.cached_tokens == len(server.format.preamble)


def test_chat_stream_raw_events(server):
    messages = [{"role": "user", "content": "Hello there"}]
    want = expected_reply(server, messages, 20)
    with httpx.Client(timeout=TIMEOUT) as client:
        events, last = stream_events(client, server.url + "/v1/chat/completions", {
            "model": server.name, "messages": messages, "max_tokens": 20, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True},
        })
    assert last == "[DONE]"
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    assert len({e["id"] for e in events}) == 1
    pieces = [e["choices"][0]["delta"].get("content", "") for e in events if e["choices"]]
    assert "".join(pieces) .rstrip() == want
    finish = [e for e in events if e["choices"] and e["choices"][0]["finish_reason"]]
    assert len(finish) == 1 and finish[0]["choices"][0]["finish_reason"] in ("stop", "length")
    usage = events[-1]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] > 0
    assert all(e["usage"] is None for e in events[:-1])


def test_chat_stream_through_the_openai_client(server):
    messages = [{"role": "system", "content": "ignored"}]  # the raven format has no system turn
    with pytest.raises(openai.BadRequestError, match="no system turn"):
        client_for(server).chat.completions.create(model=server.name, messages=messages)
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": [{"type": "text", "text": "How are "},
                                             {"type": "text", "text": "you?"}]}]
    flat = messages[:2] + [{"role": "user", "content": "How are you?"}]
    want = expected_reply(server, flat, 16)
    stream = client_for(server).chat.completions.create(
        model=server.name, messages=messages, max_tokens=16, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.rstrip() == want
    assert chunks[-1].usage.total_tokens == (chunks[-1].usage.prompt_tokens
                                             + chunks[-1].usage.completion_tokens)


def test_continued_conversation_reports_cached_tokens(server):
    first = [{"role": "user", "content": "What is the capital of the moon?"}]
    one = client_for(server).chat.completions.create(
        model=server.name, messages=first, max_tokens=12, temperature=0
    )
    more = first + [{"role": "assistant", "content": one.choices[0].message.content},
                    {"role": "user", "content": "And of Mars?"}]
    two = client_for(server).chat.completions.create(
        model=server.name, messages=more, max_tokens=12, temperature=0
    )
    cached = two.usage.prompt_tokens_details.cached_tokens
    # Everything up to the first reply came from the cache, not only the preamble.
    assert cached >= one.usage.prompt_tokens > len(server.format.preamble)
    assert cached < two.usage.prompt_tokens
    assert two.choices[0].message.content == expected_reply(server, more, 12)


def test_sixteen_concurrent_streaming_clients(server):
    prompts = [f"Story number {i}: the" for i in range(16)]
    wanted = [expected_completion(server, p, max_tokens=40) for p in prompts]

    async def one(client: openai.AsyncOpenAI, prompt: str) -> str:
        stream = await client.completions.create(
            model=server.name, prompt=prompt, max_tokens=40, temperature=0, stream=True
        )
        return "".join([chunk.choices[0].text async for chunk in stream])

    async def all_of_them() -> list[str]:
        client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused",
                                    max_retries=0, timeout=TIMEOUT)
        async with client:
            return await asyncio.wait_for(
                asyncio.gather(*(one(client, p) for p in prompts)), TIMEOUT
            )

    before = server.metrics()
    assert asyncio.run(all_of_them()) == wanted
    after = server.metrics()
    generated = after["rwkv_generated_tokens_total"] - before["rwkv_generated_tokens_total"]
    assert generated == 16 * 40
    key = 'rwkv_requests_total{path="/v1/completions",status="200"}'
    assert after[key] - before.get(key, 0) == 16


def test_metrics(server):
    client_for(server).completions.create(model=server.name, prompt="x", max_tokens=3)
    samples = server.metrics()
    assert samples['rwkv_requests_total{path="/v1/completions",status="200"}'] >= 1
    assert samples["rwkv_queue_depth"] == 0
    assert samples["rwkv_requests_running"] == 0
    assert samples["rwkv_batch_occupancy"] == 0
    assert samples["rwkv_parallel_slots"] == 4
    assert samples['rwkv_completions_total{finish_reason="length"}'] >= 1


# ---- bad requests ----


def _post(live: LiveServer, path: str, **kwargs) -> httpx.Response:
    kwargs.setdefault("timeout", TIMEOUT)
    return httpx.post(live.url + path, **kwargs)


def _error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


BAD_BODIES = [
    # (path, body, status, param, words in the message)
    ("/v1/completions", {"prompt": "x", "max_tokens": "5"}, 400, "max_tokens", "integer"),
    ("/v1/completions", {"prompt": "x", "temperature": True}, 400, "temperature", "number"),
    ("/v1/completions", {"prompt": 5}, 400, "prompt", "string"),
    ("/v1/completions", {"prompt": [1, 2, 3]}, 400, "prompt", "not supported"),
    ("/v1/completions", {}, 400, "prompt", "required"),
    ("/v1/completions", {"prompt": "x", "top_p": 1.5}, 400, "top_p", "top_p"),
    ("/v1/completions", {"prompt": "x", "max_tokens": -1}, 400, "max_tokens", "max_tokens"),
    ("/v1/completions", {"prompt": "x", "n": 2}, 400, "n", "not supported"),
    ("/v1/completions", {"prompt": "x", "logprobs": 2}, 400, "logprobs", "not supported"),
    ("/v1/completions", {"prompt": "x", "stop": [1]}, 400, "stop", "strings"),
    ("/v1/chat/completions", {"messages": []}, 400, "messages", "non-empty"),
    ("/v1/chat/completions", {"messages": "hi"}, 400, "messages", "array"),
    ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}, 400,
     "messages[0].role", "user"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 3}]}, 400,
     "messages[0].content", "string"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "logprobs": True},
     400, "logprobs", "not supported"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                              "tools": [{"type": "function", "function": {"name": "f"}}]},
     400, "tools", "not supported"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "n": 3}, 400,
     "n", "not supported"),
    ("/v1/chat/completions", {"messages": [{"role": "tool", "content": "x"}]}, 400,
     "messages[0].role", "not supported"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                              "stream_options": {"include_usage": "yes"}}, 400,
     "stream_options.include_usage", "boolean"),
]


@pytest.mark.parametrize("path, body, status, param, words", BAD_BODIES)
def test_bad_request_bodies(server, path, body, status, param, words):
    error = _error_of(_post(server, path, json=body), status)
    assert error["param"] == param
    assert words in error["message"]
    assert error["type"] == "invalid_request_error"


def test_malformed_json_wrong_model_and_unknown_paths(server):
    error = _error_of(_post(server, "/v1/completions", content=b'{"prompt": "x",'), 400)
    assert "JSON" in error["message"]
    error = _error_of(_post(server, "/v1/chat/completions", content=b"[1, 2]"), 400)
    assert "object" in error["message"]
    error = _error_of(_post(server, "/v1/completions", json={"model": "gpt-4", "prompt": "x"}),
                      404)
    assert error["code"] == "model_not_found" and server.name in error["message"]
    with pytest.raises(openai.NotFoundError, match=server.name):
        client_for(server).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "x"}]
        )
    with pytest.raises(openai.BadRequestError, match="not supported"):
        client_for(server).completions.create(model=server.name, prompt="x", n=2)
    _error_of(httpx.get(server.url + "/v1/nothing", timeout=TIMEOUT), 404)
    _error_of(httpx.get(server.url + "/v1/completions", timeout=TIMEOUT), 405)
    # ... and the server goes on serving.
    ok = client_for(server).completions.create(model=server.name, prompt="x", max_tokens=2)
    assert ok.usage.completion_tokens == 2


def test_body_over_one_megabyte(server):
    big = {"prompt": "x" * (1 << 20), "max_tokens": 1}
    error = _error_of(_post(server, "/v1/completions", json=big), 413)
    assert error["code"] == "request_too_large"

    def chunked():  # no Content-Length: the limit is checked as the body arrives
        yield b'{"prompt": "'
        for _ in range(20):
            yield b"y" * 65536
        yield b'"}'

    error = _error_of(_post(server, "/v1/completions", content=chunked()), 413)
    assert error["code"] == "request_too_large"
    # Just under the limit is read (and refused only for what it says, a wrong model here).
    near = json.dumps({"model": "other", "prompt": "z" * ((1 << 20) - 100)})
    _error_of(_post(server, "/v1/completions", content=near.encode()), 404)


def test_api_key(byte_v4):
    live = LiveServer(byte_v4, parallel=1, queue=0, api_key="s3cret-key")
    try:
        assert httpx.get(live.url + "/health", timeout=TIMEOUT).status_code == 200
        error = _error_of(httpx.get(live.url + "/v1/models", timeout=TIMEOUT), 401)
        assert error["code"] == "invalid_api_key" and "no API key" in error["message"]
        wrong = {"Authorization": "Bearer s3cret-kez"}
        error = _error_of(_post(live, "/v1/completions", json={"prompt": "x"}, headers=wrong),
                          401)
        assert "incorrect" in error["message"]
        _error_of(httpx.get(live.url + "/metrics", timeout=TIMEOUT), 401)
        with pytest.raises(openai.AuthenticationError):
            client_for(live, api_key="nope").models.list()
        result = client_for(live).completions.create(model=live.name, prompt="x", max_tokens=3)
        assert result.usage.completion_tokens == 3
        assert live.metrics()['rwkv_requests_total{path="/v1/models",status="401"}'] == 2
    finally:
        live.stop()


# ---- admission, disconnects ----


def _open_stream(live: LiveServer, client: httpx.Client, max_tokens: int = ENDLESS):
    """A streamed completion started, with its first event read (it holds its slot), and
    the iterator of its lines (dropping that would close the response)."""
    response = client.send(
        client.build_request("POST", live.url + "/v1/completions", json={
            "prompt": "Forever", "max_tokens": max_tokens, "temperature": 0, "stream": True,
        }),
        stream=True,
    )
    assert response.status_code == 200
    lines = response.iter_lines()
    assert sse_data([next(lines), next(lines)])
    return response, lines


def _wait_for(predicate, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_full_queue_gets_503_with_retry_after(one_slot):
    with httpx.Client(timeout=TIMEOUT) as running, httpx.Client(timeout=TIMEOUT) as waiting:
        first, _lines = _open_stream(one_slot, running)
        queued = threading.Thread(target=lambda: waiting.post(
            one_slot.url + "/v1/completions", json={"prompt": "q", "max_tokens": 5}))
        queued.start()
        _wait_for(lambda: one_slot.metrics()["rwkv_queue_depth"] == 1)
        refused = _post(one_slot, "/v1/completions", json={"prompt": "x", "max_tokens": 1})
        error = _error_of(refused, 503)
        assert refused.headers["Retry-After"] == "1"
        assert error["code"] == "server_overloaded" and error["type"] == "server_error"
        with pytest.raises(openai.InternalServerError):
            client_for(one_slot).completions.create(model=one_slot.name, prompt="x")
        assert one_slot.metrics()["rwkv_batch_occupancy"] == 1
        first.close()  # the running stream ends: the waiting request runs, then all is free
        queued.join(TIMEOUT)
        assert not queued.is_alive()
    ok = client_for(one_slot).completions.create(model=one_slot.name, prompt="x", max_tokens=2)
    assert ok.usage.completion_tokens == 2


def test_disconnect_mid_stream_frees_the_slot(one_slot):
    with httpx.Client(timeout=TIMEOUT) as client:
        stream, lines = _open_stream(one_slot, client)
        next(lines)
        assert one_slot.metrics()["rwkv_requests_running"] == 1
        stream.close()  # the client leaves with ENDLESS tokens to go
    # One slot: this is served only once the abandoned completion has stopped.
    started = time.monotonic()
    ok = client_for(one_slot).completions.create(model=one_slot.name, prompt="x", max_tokens=4)
    assert ok.usage.completion_tokens == 4
    assert time.monotonic() - started < 5
    samples = one_slot.metrics()
    assert samples['rwkv_completions_total{finish_reason="cancelled"}'] == 1
    # It stopped at once, not after ENDLESS tokens (the model makes thousands a second).
    assert samples["rwkv_generated_tokens_total"] < 4 + 100_000


def test_disconnect_while_waiting_for_a_whole_response(one_slot):
    # A plain (not streamed) request whose client gives up: its completion is cancelled too.
    with pytest.raises(httpx.ReadTimeout):
        _post(one_slot, "/v1/completions", json={"prompt": "x", "max_tokens": ENDLESS},
              timeout=httpx.Timeout(TIMEOUT, read=0.5))
    _wait_for(lambda: one_slot.metrics().get(
        'rwkv_completions_total{finish_reason="cancelled"}') == 1)
    ok = client_for(one_slot).completions.create(model=one_slot.name, prompt="x", max_tokens=4)
    assert ok.usage.completion_tokens == 4


# ---- the command ----


def _serve(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "rwkv_cli", "serve", "--port", "0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _read_line(stream, timeout: float) -> str:
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    assert lines, "no line in time"
    return lines[0]


def test_sigterm_with_requests_in_flight_exits_cleanly(byte_v4):
    process = _serve("--modelPath", str(byte_v4), "--parallel", "2", "--grace", "0.5",
                     "--threads", "1")
    try:
        line = _read_line(process.stdout, 60)
        url = re.search(r"http://127\.0\.0\.1:\d+", line).group(0)
        assert "bytes-v4-FP32" in line and "2 parallel" in line
        results: dict[str, list[str]] = {}

        def stream(name: str, max_tokens: int) -> None:
            with httpx.Client(timeout=TIMEOUT) as client, client.stream(
                "POST", url + "/v1/completions",
                json={"prompt": name, "max_tokens": max_tokens, "stream": True},
            ) as response:
                results[name] = sse_data(response.iter_lines())

        readers = [threading.Thread(target=stream, args=(name, ENDLESS))
                   for name in ("endless", "boundless")]
        for reader in readers:
            reader.start()
        _wait_for(lambda: "rwkv_requests_running 2.0" in httpx.get(url + "/metrics").text)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
        assert time.monotonic() - started < 0.5 + 8  # the grace, and what a loaded machine adds
        for reader in readers:
            reader.join(TIMEOUT)
        # The streams cut short by the stop end with an error event saying why.
        for name in ("endless", "boundless"):
            assert len(results[name]) > 1
            last = json.loads(results[name][-1])
            assert last["error"]["code"] == "server_shutting_down"
        out, err = process.communicate(timeout=TIMEOUT)
        assert "stopped" in out
        assert "Traceback" not in err, err
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(TIMEOUT)


def test_serve_reports_a_taken_port(byte_v4):
    with LiveServerPort() as port:
        process = subprocess.run(
            [sys.executable, "-m", "rwkv_cli", "serve", "--modelPath", str(byte_v4),
             "--port", str(port)],
            capture_output=True, text=True, timeout=60, check=False,
        )
    assert process.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in process.stderr
    assert "another --port" in process.stderr
    assert len(process.stderr.strip().splitlines()) == 1


class LiveServerPort:
    """A port taken by a listening socket for the duration."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.create_server(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *exc) -> None:
        self.sock.close()


def test_serve_refuses_options_of_other_modes(byte_v4):
    process = subprocess.run(
        [sys.executable, "-m", "rwkv_cli", "--size", "3", "serve", "--modelPath", str(byte_v4)],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert process.returncode == 1
    assert "--size does nothing with serve" in process.stderr
