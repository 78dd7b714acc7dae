"""The chat REPL and one-shot completions (presentation over `RWKV`).

The conversation is carried as a model state: each turn starts from the state after
everything said so far, so a turn costs only its own new tokens however long the chat is. The
same state is what `/save` writes and `/load` restores, so a conversation survives a restart.
"""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from rich.console import Console

from ..core.chat_format import ChatFormat
from ..errors import UserError
from . import home
from .load import load_model

if TYPE_CHECKING:
    from ..core.model import RWKV, CompletionResult

HELP = """[bold]Chat commands[/]
  /reset        start over (forget the conversation)
  /save FILE    save the conversation (its model state and text) to FILE
  /load FILE    continue a conversation saved with /save
  /help         this help
  /exit         quit (also Ctrl-D)
Ctrl-C stops the current reply; the chat goes on."""

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


class ChatSession:
    """The conversation: its text and the model state after that text."""

    def __init__(self, model: RWKV, prompt_format: str | ChatFormat, name: str = "",
                 sampling: dict[str, Any] | None = None):
        self.model = model
        self.name = name
        self.format = (
            prompt_format if isinstance(prompt_format, ChatFormat)
            else ChatFormat.named(prompt_format)
        )
        self.user, self.bot = self.format.user, self.format.bot
        self.sampling = dict(sampling or {})
        self.preamble = self.format.preamble
        self._preamble_state = model.get_state(self.preamble)
        self.history = self.preamble
        self.state = self._preamble_state.copy()

    def reset(self) -> None:
        self.history = self.preamble
        self.state = self._preamble_state.copy()

    def reply(
        self,
        message: str,
        on_text: Callable[[str], None] | None = None,
        stop_event: threading.Event | None = None,
    ) -> CompletionResult:
        prompt = self.format.turn(message)
        callback = (lambda piece, _so_far: on_text(piece)) if on_text else None
        result = self.model.completion(
            prompt,
            init_state=self.state,
            stop=self.format.stop,
            stream_callback=callback,
            stop_event=stop_event,
            **self.sampling,
        )
        self._advance(prompt, result)
        return result

    def _advance(self, prompt: str, result: CompletionResult) -> None:
        """Move the state past this turn: prompt, reply, and the blank line that ends it.

        The result's state already holds the prompt and the first `fed_tokens` reply tokens
        (the token that ended the reply is sampled, never fed); only the rest of the turn's
        text is evaluated here.
        """
        turn_end = self.format.turn_end(result.completion).encode("utf-8")
        fed_bytes = self.model.tokenizer.decode_bytes(result.tokens[: result.fed_tokens])
        state = None
        if result.state is not None and turn_end.startswith(fed_bytes):
            try:
                rest = turn_end[len(fed_bytes):].decode("utf-8")
            except UnicodeDecodeError:
                rest = None
            if rest == "":
                state = result.state
            elif rest is not None:
                state = self.model.completion(rest, init_state=result.state, max_tokens=0).state
        if state is None:  # the reply's tokens and its text disagree: evaluate the turn afresh
            text = prompt + turn_end.decode("utf-8")
            state = self.model.completion(text, init_state=self.state, max_tokens=0).state
        assert state is not None
        self.state = state
        self.history += prompt + turn_end.decode("utf-8")

    def save(self, path: Path) -> None:
        import numpy as np

        path = Path(path).expanduser()
        try:
            with open(path, "wb") as handle:
                np.savez(
                    handle,
                    state=self.state,
                    history=np.array(self.history),
                    model=np.array(self.name),
                    n_vocab=np.array(self.model.n_vocab),
                )
        except OSError as exc:
            raise ChatError(f"cannot save to {path}: {exc.strerror or exc}") from exc

    def load(self, path: Path) -> None:
        import numpy as np

        path = Path(path).expanduser()
        try:
            with np.load(path, allow_pickle=False) as data:
                state = np.asarray(data["state"], dtype=np.float32).reshape(-1)
                history = str(data["history"])
        except FileNotFoundError:
            raise ChatError(f"no such file: {path}") from None
        except Exception as exc:
            # np.load's exceptions on a file that is not ours are many and undocumented (found
            # by tests/fuzz: EOFError for an empty file, zipfile's BadZipFile and
            # NotImplementedError for a damaged .npz, ValueError, KeyError); each means the same
            raise ChatError(f"{path} is not a conversation saved with /save ({exc})") from exc
        if state.shape[0] != self.model.state_len:
            raise ChatError(
                f"{path} holds a state of {state.shape[0]} values; this model's state has "
                f"{self.model.state_len} (it was saved with another model)"
            )
        self.state = state
        self.history = history


def _perf_line(result: CompletionResult) -> str:
    usage, perf = result.usage, result.perf
    parts = [f"{usage.completion_tokens} tokens, {perf.completion_per_second:.1f} tokens/s"]
    if usage.prompt_tokens:
        parts.append(
            f"prompt {usage.prompt_tokens} tokens at {perf.full_prompt_per_second:.0f} tokens/s"
        )
    if result.finish_reason == "cancelled":
        parts.append("stopped")
    return "[dim]  " + " · ".join(parts) + "[/]"  # printed with soft_wrap: one line


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def run_chat(
    console: Console,
    model_path: Path | None = None,
    model_name: str | None = None,
    threads: int | None = None,
    gpu: int | str = 0,
    temperature: float = 1.0,
    top_p: float = 0.7,
    max_tokens: int = 250,
) -> None:
    choice = home.resolve_model(model_path, model_name)
    model = load_model(console, choice, threads, gpu)
    try:
        fmt = ChatFormat.for_model(model.n_vocab, choice.prompt_format)
        with console.status("Reading the preamble...", spinner="dots"):
            session = ChatSession(
                model, fmt, name=choice.name,
                sampling={"temperature": temperature, "top_p": top_p, "max_tokens": max_tokens},
            )
        console.print(
            f"[bold]rwkv-cpp chat[/] · {choice.name} (RWKV v{model.arch}, {model.data_type}, "
            f"{model.threads} threads) · /help for commands, Ctrl-D to quit",
            soft_wrap=True,
        )
        _repl(console, session)
    finally:
        model.free()


def _repl(console: Console, session: ChatSession) -> None:
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:  # not on every platform
        pass
    while True:
        try:
            line = console.input(f"[bold green]{session.user}:[/] ")
        except EOFError:
            console.print()
            return
        except KeyboardInterrupt:
            console.print("\n[dim](Ctrl-D or /exit quits)[/]")
            continue
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            command, _, argument = text.partition(" ")
            argument = argument.strip()
            if command in ("/exit", "/quit"):
                return
            try:
                if command == "/help":
                    console.print(HELP)
                elif command == "/reset":
                    session.reset()
                    console.print("[dim]Conversation reset.[/]")
                elif command in ("/save", "/load"):
                    if not argument:
                        console.print(f"[yellow]usage: {command} FILE[/]")
                        continue
                    if command == "/save":
                        session.save(Path(argument))
                        console.print(f"[dim]Saved the conversation to {argument}.[/]")
                    else:
                        session.load(Path(argument))
                        console.print(f"[dim]Loaded the conversation from {argument}.[/]")
                else:
                    console.print(f"[yellow]unknown command {command}; /help lists them[/]")
            except ChatError as exc:
                console.print(f"[red]{exc}[/]")
            continue

        console.print(f"[bold cyan]{session.bot}:[/]", end="")
        stop = threading.Event()
        with ctrl_c_stops(stop):
            result = session.reply(text, on_text=_write, stop_event=stop)
        _write("\n")
        console.print(_perf_line(result), soft_wrap=True)


def run_complete(
    console: Console,
    prompt: str,
    model_path: Path | None = None,
    model_name: str | None = None,
    threads: int | None = None,
    gpu: int | str = 0,
    temperature: float = 1.0,
    top_p: float = 0.7,
    max_tokens: int = 64,
    stop: list[str] | None = None,
    seed: int | None = None,
    json_output: bool = False,
) -> None:
    choice = home.resolve_model(model_path, model_name)
    model = load_model(console, choice, threads, gpu, quiet=True)
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

