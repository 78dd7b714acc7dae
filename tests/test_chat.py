"""The chat REPL driven through a pseudo-terminal, on a random-weight byte-vocabulary v4 model."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pexpect
import pytest
from helpers import default_ctrl_c

PROMPT = "User: "
PERF = re.compile(r"(\d+) tokens, [\d.]+ tokens/s · prompt (\d+) tokens")


def spawn_chat(tmp_path, *args: str, model):
    env = dict(os.environ, RWKV_HOME=str(tmp_path / "home"), NO_COLOR="1", TERM="dumb",
               COLUMNS="200")
    child = pexpect.spawn(
        sys.executable, ["-m", "rwkv_cli", "chat", "--model-path", str(model),
                         "--threads", "1", *args],
        env=env, encoding="utf-8", timeout=30, dimensions=(40, 200), preexec_fn=default_ctrl_c,
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


def test_two_turns_process_only_the_new_text(tmp_path, byte_v4):
    child = spawn_chat(tmp_path, "--max-tokens", "24", model=byte_v4)
    for message in ("Hello there", "What is a dragon?"):
        completion_tokens, prompt_tokens = turn(child, message)
        assert 0 < completion_tokens <= 24
        # Byte vocabulary: the turn's prompt is exactly "User: {message}\n\nBot:", no history.
        assert prompt_tokens == len(f"User: {message}\n\nBot:".encode())
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_reset_save_and_load_restore_the_conversation_state(tmp_path, byte_v4):
    saved, after_reset, reloaded = (tmp_path / n for n in ("a.npz", "b.npz", "c.npz"))
    child = spawn_chat(tmp_path, "--max-tokens", "16", model=byte_v4)
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


def test_ctrl_c_stops_the_reply_not_the_program_and_a_saved_chat_continues(tmp_path, byte_v4):
    saved = tmp_path / "chat.npz"
    child = spawn_chat(tmp_path, "--max-tokens", "16", model=byte_v4)
    turn(child, "Remember the word lantern")
    command(child, f"/save {saved}", "Saved the conversation")
    child.sendline("/exit")
    child.expect(pexpect.EOF)

    # A restart: the saved conversation goes on, and a long reply is stopped by Ctrl-C.
    child = spawn_chat(tmp_path, "--max-tokens", "1000000", model=byte_v4)
    command(child, f"/load {saved}", "Loaded the conversation")
    child.expect_exact(PROMPT)  # past the loaded conversation's "User: ..." line it shows
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
def tiny_rwkv(byte_v4):
    from rwkv_cli import RWKV

    with RWKV(byte_v4, threads=1, state_cache_size=0) as model:
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
    # A reply that ends without whitespace (as this one, seeded, does): only the last sampled
    # token and the blank line that ends the turn are new.
    assert result.completion == result.completion.rstrip()
    assert len(prompts) == 2 and len(prompts[1].encode()) <= 2 + 1
    np.testing.assert_allclose(session.state, tiny_rwkv.get_state(session.history), atol=1e-4)


# ---- issue 15: input, system prompts, settings, reasoning models (generated models) ----

XTERM = {"TERM": "xterm", "PROMPT_TOOLKIT_NO_CPR": "1"}


@pytest.fixture(scope="module")
def models(byte_v4, world_v7, tmp_path_factory):
    """The byte model (the Raven labels, User/Bot) and the World model under a G-series name
    (World labels, system turn, think mode: the format of a file is picked by its name)."""
    g1 = tmp_path_factory.mktemp("g1") / "rwkv7-g1-tiny.bin"
    g1.symlink_to(world_v7)
    return {"bytes": byte_v4, "g1": g1}


def spawn(tmp_path, model, *args: str, env: dict | None = None, color: bool = False):
    import io

    environment = dict(os.environ, RWKV_HOME=str(tmp_path / "home"), TERM="dumb", COLUMNS="200")
    environment.pop("NO_COLOR", None)
    if not color:
        environment["NO_COLOR"] = "1"
    environment.update(env or {})
    child = pexpect.spawn(sys.executable, ["-m", "rwkv_cli", "chat", "--model-path", str(model),
                                           "--threads", "1", *args],
                          env=environment, encoding="utf-8", timeout=30, dimensions=(40, 200))
    child.logfile_read = io.StringIO()
    child.expect_exact("Ctrl-D to quit")
    child.expect_exact("User:")
    return child


def ask(child, message: str) -> tuple[int, int]:
    """Send a message (Enter as a terminal sends it); (completion, prompt) tokens."""
    child.send(message + "\r")
    child.expect(PERF)
    counts = int(child.match.group(1)), int(child.match.group(2))
    child.expect_exact("User:")
    return counts


def do(child, line: str, answer: str) -> None:
    child.send(line + "\r")
    child.expect_exact(answer)
    child.expect_exact("User:")


def saved_history(child, path) -> str:
    do(child, f"/save {path}", "Saved the conversation")
    return str(np.load(path)["history"])


def quit_chat(child) -> str:
    child.send("/exit\r")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    return child.logfile_read.getvalue()


@pytest.mark.parametrize("env", [{}, XTERM], ids=["dumb", "xterm"])
def test_an_empty_enter_moves_to_a_new_line(tmp_path, models, env):
    child = spawn(tmp_path, models["bytes"], env=env)
    for _ in range(3):
        child.send("\r")
        child.expect_exact("User:")
    transcript = quit_chat(child)
    assert "User: User:" not in transcript
    # each Enter ends its line (the banner's and /exit's lines end too)
    assert transcript.split("Ctrl-D to quit", 1)[1].count("\n") >= 1 + 3 + 1


def test_a_multi_line_paste_is_one_message_and_a_blank_line_in_it_is_folded(tmp_path, models):
    child = spawn(tmp_path, models["bytes"], "--max-tokens", "4", env=XTERM)
    child.send("\x1b[200~line one\n\nline two\x1b[201~")  # a bracketed paste
    _, prompt_tokens = ask(child, "")
    assert prompt_tokens == len("User: line one\nline two\n\nBot:")
    history = saved_history(child, tmp_path / "c.npz")
    assert history.count("User: ") == 2 and "User: line one\nline two\n\nBot:" in history
    quit_chat(child)


def test_a_line_ending_in_a_backslash_goes_on_to_the_next(tmp_path, models):
    for env in ({}, XTERM):
        child = spawn(tmp_path, models["bytes"], "--max-tokens", "4", env=env)
        child.send("first line\\\r")
        _, prompt_tokens = ask(child, "second line")
        assert prompt_tokens == len("User: first line\nsecond line\n\nBot:")
        quit_chat(child)


def test_system_prompt_from_the_flag_and_the_command(tmp_path, models):
    child = spawn(tmp_path, models["g1"], "--max-tokens", "3", "--system", "Be brief.")
    # the system turn replaces the preamble exchange
    assert saved_history(child, tmp_path / "a.npz") == "System: Be brief.\n\n"
    do(child, "/system", "Be brief.")
    do(child, "/system Answer in French.", "starts over")
    ask(child, "Hello")
    history = saved_history(child, tmp_path / "b.npz")
    assert history.startswith("System: Answer in French.\n\nUser: Hello\n\nAssistant:")
    do(child, "/system off", "cleared")
    assert saved_history(child, tmp_path / "c.npz").startswith("User: Hi! Who are you?")
    quit_chat(child)
    line = run_chat_error(tmp_path, models["bytes"], "--system", "Be brief.")
    assert "no system turn" in line


def run_chat_error(tmp_path, model, *args: str) -> str:
    import subprocess

    env = dict(os.environ, RWKV_HOME=str(tmp_path / "home"), NO_COLOR="1")
    command = [sys.executable, "-m", "rwkv_cli", "chat", "--model-path", str(model), *args]
    result = subprocess.run(command, check=False, env=env, capture_output=True, text=True,
                            timeout=60, stdin=subprocess.DEVNULL)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    return lines[0]


def reply_of(history: str, message: str) -> str:
    return history.split(f"User: {message}\n\nBot:", 1)[1].split("\n\n", 1)[0]


def test_seed_and_stop_shape_the_replies(tmp_path, models):
    replies = []
    for seed in ("7", "7", "8"):
        child = spawn(tmp_path, models["bytes"], "--max-tokens", "12", "--seed", seed)
        ask(child, "Tell me")
        replies.append(reply_of(saved_history(child, tmp_path / "s.npz"), "Tell me"))
        quit_chat(child)
    assert replies[0] == replies[1] != replies[2]

    child = spawn(tmp_path, models["bytes"], "--max-tokens", "12", "--temperature", "0")
    ask(child, "Tell me")
    greedy = reply_of(saved_history(child, tmp_path / "g.npz"), "Tell me")
    quit_chat(child)
    assert len(greedy.strip()) >= 6
    stop = greedy.strip()[3:5]
    child = spawn(tmp_path, models["bytes"], "--max-tokens", "12", "--temperature", "0",
                  "--stop", stop)
    ask(child, "Tell me")
    stopped = reply_of(saved_history(child, tmp_path / "t.npz"), "Tell me")
    quit_chat(child)
    assert stopped == greedy[: greedy.index(stop)].rstrip()


def test_set_changes_the_sampling_in_the_chat(tmp_path, models):
    child = spawn(tmp_path, models["bytes"], "--max-tokens", "12")
    do(child, "/set", "temperature 1.0, top_p 0.7, max_tokens 12")
    do(child, "/set top_p 2", "top_p must be in (0, 1]")
    do(child, "/set warmth 2", "usage: /set NAME VALUE")
    do(child, "/set max_tokens 3", "max_tokens is now 3")
    completion_tokens, _ = ask(child, "Hi")
    assert completion_tokens <= 3
    do(child, "/set temperature 0", "temperature is now 0.0")
    do(child, "/set max-tokens 12", "max_tokens is now 12")
    do(child, "/reset", "Conversation reset")
    ask(child, "Again")
    first = reply_of(saved_history(child, tmp_path / "a.npz"), "Again")
    do(child, "/reset", "Conversation reset")
    ask(child, "Again")
    assert reply_of(saved_history(child, tmp_path / "b.npz"), "Again") == first  # greedy now
    quit_chat(child)


def test_load_shows_the_restored_conversation_and_explains_a_wrong_file(tmp_path, models):
    saved = tmp_path / "chat.npz"
    child = spawn(tmp_path, models["bytes"], "--max-tokens", "6")
    ask(child, "Remember the word lantern")
    saved_history(child, saved)
    quit_chat(child)

    child = spawn(tmp_path, models["bytes"], "--max-tokens", "6")
    child.send(f"/load {saved}\r")
    child.expect_exact("Loaded the conversation")
    child.expect_exact("User: Remember the word lantern")
    child.expect_exact("Bot:")
    child.expect_exact("User:")
    not_a_save = tmp_path / "notes.txt"
    not_a_save.write_text("just some text")
    child.send(f"/load {not_a_save}\r")
    child.expect_exact("not a conversation saved with /save")
    child.expect_exact("User:")
    transcript = quit_chat(child)
    assert ".npz" in transcript and "pickle" not in transcript


def test_think_mode_shows_the_reasoning_dimmed_and_the_answer_plain(tmp_path, models):
    child = spawn(tmp_path, models["g1"], "--max-tokens", "6", "--think", color=True, env=XTERM)
    child.send("What is 2+2?\r")
    child.expect_exact("\x1b[2m(thinking)")
    child.expect(r"thought (\d+) tokens")
    child.expect_exact("User:")
    history = saved_history(child, tmp_path / "t.npz")
    assert "<think" not in history  # the carried conversation has the answer only
    assert "User: What is 2+2?\n\nAssistant:" in history
    do(child, "/think off", "Thinking is off")
    child.send("And 3+3?\r")
    child.expect(PERF)
    child.expect_exact("User:")
    transcript = quit_chat(child)
    assert transcript.count("(thinking)") == 1
    line = run_chat_error(tmp_path, models["bytes"], "--think")
    assert "not a reasoning model" in line


def test_a_think_turn_carries_only_the_question_and_the_answer(tiny_rwkv):
    from rwkv_cli.core.chat_format import ChatFormat
    from rwkv_cli.core.conversation import Conversation

    # The byte-level model with the G series' format: the format logic, not the model's skill.
    conversation = Conversation(tiny_rwkv, ChatFormat.named("g1"), think=True,
                                sampling={"max_tokens": 12, "seed": 5})
    thinking_pieces, answer_pieces = [], []
    result = conversation.reply("Why?", on_text=answer_pieces.append,
                                on_thinking=thinking_pieces.append)
    assert "".join(thinking_pieces) == conversation.last_thinking
    assert "".join(answer_pieces) == result.completion
    expected = conversation.opening + "User: Why?\n\nAssistant: " + result.completion.strip()
    assert conversation.history == expected.rstrip() + "\n\n"
    np.testing.assert_allclose(conversation.state, tiny_rwkv.get_state(conversation.history),
                               atol=1e-4)


def test_the_world_format_folds_blank_lines_inside_a_message():
    from rwkv_cli.core.chat_format import ChatFormat, build_prompt, clean_message, user_turn

    world = ChatFormat.named("world")
    assert clean_message("  one\n\n\ntwo\n   \nthree  ") == "one\ntwo\nthree"
    assert user_turn(world, "a\n\nb") == "User: a\nb\n\nAssistant:"
    prompt = build_prompt(world, [{"role": "system", "content": "Be\n\nbrief."},
                                  {"role": "user", "content": "x\n\ny"}])
    assert prompt == "System: Be\nbrief.\n\nUser: x\ny\n\nAssistant:"


def test_build_prompt_carries_past_answers_without_their_reasoning():
    from rwkv_cli.core.chat_format import ChatFormat, build_prompt, parse_turns

    g1 = ChatFormat.named("g1")
    messages = [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "<think>\nadd them\n\nfour\n</think>\nIt is 4."},
        {"role": "user", "content": "And 3+3?"},
    ]
    no_think = build_prompt(g1, messages, preamble=False)
    assert no_think == "User: 2+2?\n\nAssistant: It is 4.\n\nUser: And 3+3?\n\nAssistant:"
    assert build_prompt(g1, messages, think=True, preamble=False).endswith(
        "User: And 3+3?\n\nAssistant: <think")
    assert build_prompt(g1, messages).startswith(g1.preamble)
    assert parse_turns(g1, no_think.rsplit("Assistant:", 1)[0]) == [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "It is 4."},
        {"role": "user", "content": "And 3+3?"},
    ]
    raven = ChatFormat.named("raven")
    with pytest.raises(ValueError, match="no system turn"):
        build_prompt(raven, [{"role": "system", "content": "x"}, {"role": "user", "content": "y"}])
    with pytest.raises(ValueError, match="no think mode"):
        build_prompt(raven, [{"role": "user", "content": "y"}], think=True)


def test_reasoning_models_are_recognised_by_name():
    from rwkv_cli.core.chat_format import ChatFormat, is_reasoning_model, split_thinking

    for name in ("rwkv7-g1-0.1b-Q8_0", "rwkv7-g1a2-1.5b-20251005-ctx8192.bin",
                 "RWKV7-G0a2-7.2B.bin", "rwkv7-g1b-2.9b"):
        assert is_reasoning_model(name), name
        assert ChatFormat.for_model(65536, "", name).reasoning
        assert ChatFormat.for_model(65536, "world", name).name == "g1"  # an older record
    for name in ("rwkv7-world-0.1b", "RWKV-x060-World-1B6", "rwkv4-raven-1.5b", "big-g12.bin"):
        assert not is_reasoning_model(name), name
    assert ChatFormat.for_model(256, "", "rwkv7-g1-test").name == "raven"  # bytes: no think
    assert split_thinking("> weigh it\n</think>\nYes.") == ("weigh it", "Yes.")
    assert split_thinking("Plain answer.") == ("", "Plain answer.")



SIGNAL_MASKS = r"""
import os, signal, sys
from rwkv_cli import RWKV

def masks():  # thread id -> whether it blocks SIGINT
    out = {}
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/status") as f:
            blocked = int(next(l for l in f if l.startswith("SigBlk:")).split()[1], 16)
        out[task] = bool(blocked >> (signal.SIGINT - 1) & 1)
    return out

before = masks()
with RWKV(sys.argv[1], threads=2) as model:
    model.completion("dragon", max_tokens=4, temperature=0)
    after = masks()
print(before[str(os.getpid())], sorted(blocks for task, blocks in after.items() if task not in before))
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux's /proc")
def test_the_engine_threads_leave_ctrl_c_to_the_main_thread(byte_v4):
    # The engine thread and the C pool's worker block SIGINT, so the kernel hands Ctrl-C to
    # the main thread (or another of the application's own threads), never to them.
    out = subprocess.run([sys.executable, "-c", SIGNAL_MASKS, str(byte_v4)], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert out.split() == ["False", "[True,", "True]"], out

