"""The scale-out example: nginx (tests/scale_out/nginx.conf) over two `rwkv-cpp serve`
instances on 127.0.0.1, a conversation routed by its `X-Conversation-Id` to one instance,
which then reuses the conversation's cached state.

nginx comes from Debian (`apt-get install nginx-light`; .ci/run installs it). Without it these
tests fail: the example is part of what the project ships, and an untested config rots.
"""

from __future__ import annotations

import httpx
import openai
import pytest
from balancer import INSTALL_HINT, Balancer, nginx_binary
from serve_helpers import LiveServer, stream_events

TIMEOUT = 20.0
CHAT = 'rwkv_requests_total{path="/v1/chat/completions",status="200"}'


@pytest.fixture(scope="module")
def cluster(byte_v4, tmp_path_factory):
    if nginx_binary() is None:
        pytest.fail(f"nginx is not installed: {INSTALL_HINT}")
    instances = [LiveServer(byte_v4, parallel=1, queue=0) for _ in range(2)]
    ports = [int(live.url.rsplit(":", 1)[1]) for live in instances]
    balancer = Balancer(tmp_path_factory.mktemp("nginx"), ports)
    yield balancer, instances
    balancer.stop()
    for live in instances:
        live.stop()


def chat_counts(instances) -> list[float]:
    return [live.metrics().get(CHAT, 0.0) for live in instances]


def client(balancer: Balancer, conversation: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=balancer.url + "/v1", api_key="unused", max_retries=0,
                         timeout=TIMEOUT, default_headers={"X-Conversation-Id": conversation})


def test_a_conversation_stays_on_one_instance_and_reuses_its_state(cluster):
    balancer, instances = cluster
    name = instances[0].name
    before = chat_counts(instances)
    chat = client(balancer, "conversation-17")
    messages = [{"role": "user", "content": "Tell me a long story about a lighthouse."}]
    previous_prompt = 0
    for turn in range(3):
        reply = chat.chat.completions.create(model=name, messages=messages, max_tokens=20,
                                             temperature=0)
        usage = reply.usage
        if turn:  # everything up to the last reply came from the instance's cache
            assert usage.prompt_tokens_details.cached_tokens >= previous_prompt
        previous_prompt = usage.prompt_tokens
        messages += [{"role": "assistant", "content": reply.choices[0].message.content},
                     {"role": "user", "content": f"And then, part {turn + 2}?"}]
    after = chat_counts(instances)
    served = sorted(a - b for a, b in zip(after, before))
    assert served == [0, 3]


def test_conversations_spread_over_both_instances(cluster):
    balancer, instances = cluster
    before = chat_counts(instances)
    for i in range(12):
        reply = client(balancer, f"user-{i}").chat.completions.create(
            model=instances[0].name, messages=[{"role": "user", "content": f"Hi {i}"}],
            max_tokens=2,
        )
        assert reply.usage.completion_tokens == 2
    after = chat_counts(instances)
    counts = [a - b for a, b in zip(after, before)]
    assert sum(counts) == 12 and min(counts) >= 1


def test_streams_pass_through_and_a_full_instance_hands_over(cluster):
    balancer, instances = cluster
    headers = {"X-Conversation-Id": "busy"}
    body = {"prompt": "Forever", "max_tokens": 10**7, "stream": True}
    with httpx.Client(timeout=TIMEOUT) as http, http.stream(
        "POST", balancer.url + "/v1/completions", json=body, headers=headers
    ) as held:
        lines = held.iter_lines()
        assert next(lines).startswith("data: ")  # token by token through nginx
        # The conversation's instance is full (one slot, no queue): it answers 503 at once
        # and nginx passes the request to the other instance.
        events, last = stream_events(http, balancer.url + "/v1/completions", {
            "prompt": "Short", "max_tokens": 5, "stream": True,
        }, headers=headers)
        assert last == "[DONE]" and events[-1]["choices"][0]["finish_reason"] == "length"
    served = [live.metrics().get('rwkv_requests_total{path="/v1/completions",status="503"}', 0)
              for live in instances]
    assert sorted(served) == [0, 1]
