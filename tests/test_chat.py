"""The chat REPL driven through a pseudo-terminal, on the tiny v4 fixture (byte vocabulary)."""

from __future__ import annotations

import os
import re
import sys

import numpy as np
import pytest
from helpers import tiny_model

pexpect = pytest.importorskip("pexpect")

PROMPT = "User: "
PERF = re.compile(r"(\d+) tokens, [\d.]+ tokens/s · prompt (\d+) tokens")


def spawn_chat(tmp_path, *args: str):
    env = dict(os.environ, RWKV_HOME=str(tmp_path / "home"), NO_COLOR="1", TERM="dumb",
               COLUMNS="200")
    child = pexpect.spawn(
        sys.executable, ["-m", "rwkv_cli", "chat", "--model-path", str(tiny_model("4v0", "FP32")),
                         "--threads", "1", *args],
        env=env, encoding="utf-8", timeout=30, dimensions=(40, 200),
    )
    child.expect_exact("Ctrl-D to quit")
    child.expect_exact(PROMPT)
    return child


def turn(child, message: str) -> tuple[int, int]:
    """Send a message; returns (completion tokens, prompt tokens) from the perf line."""
    child.sendline(message)
    child.expect_exact("Bot:")
    child.expect(PERF)
    completion_tokens, prompt_tokens = int(child.match.group(1)), int(child.match.group(2))
    child.expect_exact(PROMPT)
    return completion_tokens, prompt_tokens


def command(child, line: str, answer: str) -> None:
    child.sendline(line)
    child.expect_exact(answer)
    child.expect_exact(PROMPT)


def test_two_turns_process_only_the_new_text(tmp_path):
    child = spawn_chat(tmp_path, "--max-tokens", "24")
    for message in ("Hello there", "What is a dragon?"):
        completion_tokens, prompt_tokens = turn(child, message)
        assert 0 < completion_tokens <= 24
        # Byte vocabulary: the turn's prompt is exactly "User: {message}\n\nBot:", no history.
        assert prompt_tokens == len(f"User: {message}\n\nBot:".encode())
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_reset_save_and_load_restore_the_conversation_state(tmp_path):
    saved, after_reset, reloaded = (tmp_path / n for n in ("a.npz", "b.npz", "c.npz"))
    child = spawn_chat(tmp_path, "--max-tokens", "16")
    turn(child, "Remember the word lantern")
    command(child, f"/save {saved}", "Saved the conversation")
    command(child, "/reset", "Conversation reset")
    command(child, f"/save {after_reset}", "Saved the conversation")
    command(child, f"/load {saved}", "Loaded the conversation")
    command(child, f"/save {reloaded}", "Saved the conversation")
    command(child, f"/load {tmp_path / 'missing.npz'}", "no such file")
    command(child, "/frobnicate", "unknown command")
    command(child, "/help", "/save FILE")
    child.sendeof()
    child.expect(pexpect.EOF)

    first, reset, again = (np.load(p) for p in (saved, after_reset, reloaded))
    assert np.array_equal(first["state"], again["state"])
    assert str(first["history"]) == str(again["history"])
    assert "lantern" in str(first["history"]) and "lantern" not in str(reset["history"])
    assert not np.array_equal(first["state"], reset["state"])


def test_ctrl_c_stops_the_reply_not_the_program_and_a_saved_chat_continues(tmp_path):
    saved = tmp_path / "chat.npz"
    child = spawn_chat(tmp_path, "--max-tokens", "16")
    turn(child, "Remember the word lantern")
    command(child, f"/save {saved}", "Saved the conversation")
    child.sendline("/exit")
    child.expect(pexpect.EOF)

    # A restart: the saved conversation goes on, and a long reply is stopped by Ctrl-C.
    child = spawn_chat(tmp_path, "--max-tokens", "1000000")
    command(child, f"/load {saved}", "Loaded the conversation")
    child.sendline("Tell me a very long story")
    child.expect_exact("Bot:")
    child.expect(r"\S{10}")  # the reply is streaming
    child.sendintr()
    child.expect(PERF)
    assert int(child.match.group(1)) < 1000000
    child.expect_exact("stopped")
    child.expect_exact(PROMPT)
    # Ctrl-C at the prompt does not quit either.
    child.sendintr()
    child.expect_exact("/exit quits")
    child.expect_exact(PROMPT)
    command(child, "/reset", "Conversation reset")
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


@pytest.fixture(scope="module")
def tiny_rwkv():
    from rwkv_cli import RWKV

    with RWKV(tiny_model("4v0", "FP32"), threads=1, state_cache_size=0) as model:
        yield model


def test_the_chat_state_is_the_state_after_the_whole_conversation(tiny_rwkv):
    import threading

    from rwkv_cli.app.chat import ChatSession

    session = ChatSession(tiny_rwkv, "raven", sampling={"max_tokens": 30, "seed": 1})
    session.reply("Hello there")
    stop = threading.Event()
    pieces = []

    def on_text(piece):
        pieces.append(piece)
        if len(pieces) == 5:
            stop.set()

    result = session.reply("And now?", on_text=on_text, stop_event=stop)
    assert result.finish_reason == "cancelled"
    assert session.history.startswith(session.preamble)
    assert session.history.endswith(result.completion.rstrip() + "\n\n")
    expected = tiny_rwkv.get_state(session.history)
    np.testing.assert_allclose(session.state, expected, rtol=1e-4, atol=1e-4)
    session.reset()
    np.testing.assert_allclose(session.state, tiny_rwkv.get_state(session.preamble), atol=1e-6)


def test_a_turn_evaluates_only_what_the_reply_did_not_already_feed(tiny_rwkv, monkeypatch):
    from rwkv_cli.app.chat import ChatSession

    session = ChatSession(tiny_rwkv, "raven", sampling={"max_tokens": 40, "seed": 3})
    prompts = []
    original = tiny_rwkv.completion

    def spy(prompt="", **kwargs):
        prompts.append(prompt)
        return original(prompt, **kwargs)

    monkeypatch.setattr(tiny_rwkv, "completion", spy)
    result = session.reply("Tell me about lanterns")
    assert prompts[0] == "User: Tell me about lanterns\n\nBot:"
    if result.completion == result.completion.rstrip():
        # Only the last sampled token and the blank line that ends the turn are new.
        assert len(prompts) == 2 and len(prompts[1].encode()) <= 2 + 1
    np.testing.assert_allclose(session.state, tiny_rwkv.get_state(session.history), atol=1e-4)
