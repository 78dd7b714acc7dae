"""The chat REPL and one-shot completions (presentation over `RWKV` and `Conversation`).

The conversation (core/conversation.py) is carried as a model state, so a turn costs only its
new tokens however long the chat is; `/save` writes that state with the text, and `/load`
continues it after a restart. The prompt formats (system turn, think mode, blank lines) are
core/chat_format.py's; this module reads lines, runs commands and shows the replies.

Input: in a terminal, a prompt_toolkit line editor with history; Enter sends, a line ending in
`\\` continues the message on the next line, Alt-Enter inserts a newline, and a paste of
several lines (bracketed paste) is one message. From a pipe, lines are read as they come
(with the same `\\` continuation), as they are in a dumb terminal.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from rich.console import Console
from rich.markup import escape

from ..core.chat_format import ChatFormat
from ..core.conversation import Conversation
from ..errors import InvalidArgument, UserError
from . import home
from .load import load_model

if TYPE_CHECKING:
    from ..core.results import CompletionResult

HELP = """[bold]Chat commands[/]
  /reset              start over (forget the conversation)
  /system [TEXT|off]  show, set or clear the system prompt (starts over)
  /think [on|off]     reasoning models: think before answering, or not
  /set [NAME VALUE]   show or change temperature, top_p, max_tokens
  /save FILE          save the conversation (its model state and text) to FILE
  /load FILE          continue a conversation saved with /save (and show it)
  /help               this help
  /exit               quit (also Ctrl-D)
Enter sends; end a line with \\ to go on to the next one (or Alt-Enter); a pasted block of
lines is one message. Ctrl-C stops the current reply; the chat goes on."""

SETTINGS = ("temperature", "top_p", "max_tokens")
SHOWN_ON_LOAD = 10  # messages of a loaded conversation shown (the last ones)

StopCheck = Callable[[], bool]


class ChatError(UserError):
    """A chat command that could not be done (bad file, state of another model)."""


@contextmanager
def ctrl_c_stops(event: threading.Event):
    """While active, Ctrl-C sets `event` (stopping a reply) instead of raising; a second
    Ctrl-C before the reply has stopped raises KeyboardInterrupt as usual."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame) -> None:
        if event.is_set():  # a second Ctrl-C: the user means it
            raise KeyboardInterrupt
        event.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class ChatSession(Conversation):
    """The conversation, with the files of /save and /load."""

    def save(self, path: Path) -> None:
        import numpy as np

        path = Path(path).expanduser()
        try:
            with open(path, "wb") as handle:
                np.savez(
                    handle,
                    state=self.state,
                    history=np.array(self.history),
                    opening=np.array(self.opening),
                    model=np.array(self.name),
                    n_vocab=np.array(self.model.n_vocab),
                )
        except OSError as exc:
            raise ChatError(f"cannot save to {path}: {exc.strerror or exc}") from exc

    def load(self, path: Path) -> None:
        import numpy as np

        path = Path(path).expanduser()
        what = ("a conversation file is what /save writes: a .npz archive holding the model "
                "state and the text of the chat")
        if path.is_dir():
            raise ChatError(f"{path} is a directory; {what}")
        try:
            with np.load(path, allow_pickle=False) as data:
                state = np.asarray(data["state"], dtype=np.float32).reshape(-1)
                history = str(data["history"])
                opening = str(data["opening"]) if "opening" in data else None
        except FileNotFoundError:
            raise ChatError(f"no such file: {path}") from None
        except KeyError:
            raise ChatError(f"{path} is a .npz archive but not a conversation saved with /save; "
                            f"{what}") from None
        except Exception:  # noqa: BLE001
            # np.load's exceptions on a file that is not ours are many and undocumented (found
            # by tests/fuzz: EOFError for an empty file, zipfile's BadZipFile and
            # NotImplementedError for a damaged .npz, ValueError with numpy's advice about
            # pickles); each means the same, and numpy's advice is not the user's business
            raise ChatError(f"{path} is not a conversation saved with /save; {what}") from None
        if state.shape[0] != self.model.state_len:
            raise ChatError(
                f"{path} holds a state of {state.shape[0]} values; this model's state has "
                f"{self.model.state_len} (it was saved with another model)"
            )
        self.state = state
        self.history = history
        if opening is not None and history.startswith(opening):
            self.opening = opening


# ---- input ----


class PlainReader:
    """Lines from a pipe: a line ending in a backslash continues on the next one."""

    def __init__(self, console: Console):
        self.console = console

    def read(self, label: str) -> str:
        self.console.print(f"[bold green]{label}:[/] ", end="")
        lines = []
        while True:
            line = sys.stdin.readline()
            if not line:
                if lines:
                    break
                raise EOFError
            line = line.rstrip("\n")
            if line.endswith("\\"):
                lines.append(line[:-1])
                continue
            lines.append(line)
            break
        return "\n".join(lines)


class TerminalReader:
    """A line editor: history, bracketed paste, `\\` at the end of a line to go on."""

    def __init__(self, console: Console):
        from prompt_toolkit import PromptSession
        from prompt_toolkit.key_binding import KeyBindings

        bindings = KeyBindings()

        @bindings.add("enter", eager=True)
        def _enter(event) -> None:
            buffer = event.current_buffer
            if buffer.document.is_cursor_at_the_end and buffer.text.endswith("\\"):
                buffer.delete_before_cursor(1)
                buffer.insert_text("\n")
            else:
                buffer.validate_and_handle()

        @bindings.add("escape", "enter", eager=True)
        def _newline(event) -> None:
            event.current_buffer.insert_text("\n")

        self.session: Any = PromptSession(
            key_bindings=bindings, prompt_continuation=lambda width, *_: "." * (width - 1) + " ",
        )
        self.color = console.is_terminal and not console.no_color

    def read(self, label: str) -> str:
        from prompt_toolkit.formatted_text import FormattedText

        style = "bold ansigreen" if self.color else ""
        return self.session.prompt(FormattedText([(style, f"{label}:"), ("", " ")]))


def _reader(console: Console):
    # A dumb terminal (an editor's shell buffer) has no cursor control and sends no bracketed
    # paste: it gets the plain reader, with the terminal's own line editing.
    dumb = os.environ.get("TERM", "") in ("", "dumb", "unknown")
    if sys.stdin.isatty() and sys.stdout.isatty() and not dumb:
        return TerminalReader(console)
    return PlainReader(console)


# ---- output ----


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


class ReplyPrinter:
    """Streams a reply: the reasoning dimmed (think mode), then the answer plainly."""

    def __init__(self, console: Console):
        self.console = console
        self.dim = console.is_terminal and not console.no_color
        self.thinking_started = False
        self.answer_started = False

    def thinking(self, piece: str) -> None:
        if not self.thinking_started:
            piece = piece.lstrip(">").lstrip()  # the `>` that closes `<think`
            if not piece:
                return
            self.thinking_started = True
            _write(" \x1b[2m(thinking) " if self.dim else " (thinking) ")
        _write(piece)

    def answer(self, piece: str) -> None:
        if not self.answer_started:
            if self.thinking_started:
                _write("\x1b[0m\n" if self.dim else "\n")
                self.thinking_started = False
                piece = piece.lstrip()
                if not piece:
                    return
            self.answer_started = True
        _write(piece)

    def end(self) -> None:
        _write("\x1b[0m\n" if self.dim and self.thinking_started else "\n")


def _perf_line(result: CompletionResult, thinking: CompletionResult | None = None) -> str:
    usage, perf = result.usage, result.perf
    parts = []
    if thinking is not None:
        parts.append(f"thought {thinking.usage.completion_tokens} tokens")
    parts.append(f"{usage.completion_tokens} tokens, {perf.completion_per_second:.1f} tokens/s")
    first = thinking if thinking is not None else result
    if first.usage.prompt_tokens:
        parts.append(
            f"prompt {first.usage.prompt_tokens} tokens at "
            f"{first.perf.full_prompt_per_second:.0f} tokens/s"
        )
    if result.finish_reason == "cancelled":
        parts.append("stopped")
    return "[dim]  " + " · ".join(parts) + "[/]"  # printed with soft_wrap: one line


def _show_messages(console: Console, session: ChatSession) -> None:
    messages = session.messages()
    if len(messages) > SHOWN_ON_LOAD:
        console.print(f"[dim]... {len(messages) - SHOWN_ON_LOAD} earlier messages[/]")
    labels = {"user": f"[bold green]{session.user}:[/]",
              "assistant": f"[bold cyan]{session.bot}:[/]", "system": "[bold]System:[/]"}
    for message in messages[-SHOWN_ON_LOAD:]:
        console.print(f"{labels[message['role']]} {escape(message['content'])}", soft_wrap=True)


# ---- the chat ----


def run_chat(
    console: Console,
    model_path: Path | None = None,
    model_name: str | None = None,
    threads: int | None = None,
    gpu: int | str = 0,
    tokenizer: str | None = None,
    temperature: float = 1.0,
    top_p: float = 0.7,
    max_tokens: int = 250,
    seed: int | None = None,
    stop: list[str] | None = None,
    system: str | None = None,
    think: bool = False,
) -> None:
    choice = home.resolve_model(model_path, model_name)
    model = load_model(console, choice, threads, gpu, tokenizer=tokenizer)
    try:
        fmt = ChatFormat.for_model(model.n_vocab, choice.prompt_format, choice.name)
        if system and not fmt.has_system:
            raise ChatError(f"--system: the chat format of {choice.name} ({fmt.user}/{fmt.bot}) "
                            "has no system turn")
        if think:
            _check_think(console, fmt, choice.name, "--think")
        with console.status("Reading the preamble...", spinner="dots"):
            session = ChatSession(
                model, fmt, name=choice.name, system=system, think=think, stop=stop,
                sampling={"temperature": temperature, "top_p": top_p, "max_tokens": max_tokens,
                          "seed": seed},
            )
        mode = " · thinking" if think else " · /think on to let it reason" if fmt.reasoning else ""
        console.print(
            f"[bold]rwkv-cpp chat[/] · {choice.name} (RWKV v{model.arch}, {model.data_type}, "
            f"{model.threads} threads{mode}) · /help for commands, Ctrl-D to quit",
            soft_wrap=True,
        )
        _repl(console, session)
    finally:
        model.free()


def _check_think(console: Console, fmt: ChatFormat, name: str, what: str) -> None:
    if fmt.bot != "Assistant":
        raise ChatError(f"{what}: {name} is not a reasoning model (the RWKV-7 G series thinks; "
                        f"this model's chat format is {fmt.user}/{fmt.bot})")
    if not fmt.reasoning:
        console.print(f"[yellow]{name} is not known as a reasoning model (RWKV-7 G0/G1...); "
                      "it may not think[/]", soft_wrap=True)


def _command(console: Console, session: ChatSession, command: str, argument: str) -> None:
    if command == "/help":
        console.print(HELP)
    elif command == "/reset":
        session.reset()
        console.print("[dim]Conversation reset.[/]")
    elif command == "/system":
        if not argument:
            shown = escape(session.system) if session.system else "none (the preamble opens it)"
            console.print(f"[dim]System prompt: {shown}[/]", soft_wrap=True)
            return
        if not session.format.has_system:
            raise ChatError(f"the chat format of this model ({session.user}/{session.bot}) has no "
                            "system turn")
        session.set_system(None if argument.lower() in ("off", "none") else argument)
        done = "set" if session.system else "cleared"
        console.print(f"[dim]System prompt {done}; the conversation starts over.[/]")
    elif command == "/think":
        if argument.lower() not in ("", "on", "off"):
            raise ChatError("usage: /think on|off")
        if argument:
            if argument.lower() == "on":
                _check_think(console, session.format, session.name, "/think on")
            session.think = argument.lower() == "on"
        console.print(f"[dim]Thinking is {'on' if session.think else 'off'}.[/]")
    elif command == "/set":
        _set(console, session, argument)
    elif command in ("/save", "/load"):
        if not argument:
            console.print(f"[yellow]usage: {command} FILE[/]")
            return
        if command == "/save":
            session.save(Path(argument))
            console.print(f"[dim]Saved the conversation to {escape(argument)}.[/]")
        else:
            session.load(Path(argument))
            console.print(f"[dim]Loaded the conversation from {escape(argument)}:[/]")
            _show_messages(console, session)
    else:
        console.print(f"[yellow]unknown command {escape(command)}; /help lists them[/]")


def _set(console: Console, session: ChatSession, argument: str) -> None:
    from ..core import options
    from ..core.sampling import SamplingParams

    name, _, value = argument.partition(" ")
    name = name.replace("-", "_").lower()
    if not name:
        shown = ", ".join(f"{key} {session.sampling.get(key)}" for key in SETTINGS)
        console.print(f"[dim]{shown}[/]")
        return
    if name not in SETTINGS or not value.strip():
        raise ChatError(f"usage: /set NAME VALUE, with NAME one of {', '.join(SETTINGS)}")
    try:
        if name == "max_tokens":
            number: Any = int(value)
            if options.max_tokens(number) < 1:
                raise InvalidArgument("max_tokens must be at least 1")
        else:
            number = float(value)
            trial = {key: session.sampling.get(key, 1.0) for key in ("temperature", "top_p")}
            trial[name] = number
            SamplingParams(**trial).check()
    except ValueError as exc:  # InvalidArgument is one too
        detail = str(exc) if isinstance(exc, InvalidArgument) else f"not a number: {value!r}"
        raise ChatError(f"/set {name}: {detail}") from None
    session.sampling[name] = number
    console.print(f"[dim]{name} is now {number}.[/]")


def _repl(console: Console, session: ChatSession) -> None:
    reader = _reader(console)
    while True:
        try:
            line = reader.read(session.user)
        except EOFError:
            console.print()
            return
        except KeyboardInterrupt:
            console.print("[dim](Ctrl-D or /exit quits)[/]")
            continue
        text = line.strip()
        if not text:
            continue
        if text.startswith("/") and "\n" not in text:
            command, _, argument = text.partition(" ")
            if command in ("/exit", "/quit"):
                return
            try:
                _command(console, session, command, argument.strip())
            except ChatError as exc:
                console.print(f"[red]{escape(str(exc))}[/]", soft_wrap=True)
            continue

        console.print(f"[bold cyan]{session.bot}:[/]", end="")
        printer = ReplyPrinter(console)
        stop = threading.Event()
        with ctrl_c_stops(stop):
            result = session.reply(text, on_text=printer.answer, stop_event=stop,
                                   on_thinking=printer.thinking)
        printer.end()
        console.print(_perf_line(result, session.last_thinking_result), soft_wrap=True)


def run_complete(
    console: Console,
    prompt: str,
    model_path: Path | None = None,
    model_name: str | None = None,
    threads: int | None = None,
    gpu: int | str = 0,
    tokenizer: str | None = None,
    temperature: float = 1.0,
    top_p: float = 0.7,
    max_tokens: int = 64,
    stop: list[str] | None = None,
    seed: int | None = None,
    json_output: bool = False,
) -> None:
    choice = home.resolve_model(model_path, model_name)
    model = load_model(console, choice, threads, gpu, quiet=True, tokenizer=tokenizer)
    try:
        event = threading.Event()
        with ctrl_c_stops(event):
            result = model.completion(
                prompt, max_tokens=max_tokens, temperature=temperature, top_p=top_p, stop=stop,
                seed=seed, stop_event=event,
                stream_callback=None if json_output else (lambda piece, _: _write(piece)),
            )
        if json_output:
            payload = result.to_dict()
            payload.update(model=choice.name, threads=model.threads, engine=model.engine)
            import json

            print(json.dumps(payload, ensure_ascii=False))
        else:
            _write("\n")
    finally:
        model.free()
