"""The chat turn formats RWKV models were tuned on: how a conversation becomes a prompt.

A turn is `{user}: {message}\\n\\n{bot}:`, the reply ends at a blank line, and the
conversation opens with a system turn (`System: ...\\n\\n`, where the format has one) or with
a first exchange that sets the tone (the preamble). The labels differ by family. Shared by
everything that builds chat prompts (the terminal chat, an HTTP chat endpoint), so a fix
lands once; the functions here are plain text in, text out.

Facts of the published formats (the model authors' notes, see the project's MODELS.md):
- World models (v5 to v7, and the G series): `User:` / `Assistant:`, optional `System:` turn.
  A blank line separates turns, so a blank line inside a message becomes a single newline.
- Raven (RWKV-4, 20B vocabulary): `User:` / `Bot:`, no system turn.
- The RWKV-7 G series (G0, G1, G1a...) reasons: in think mode the assistant turn opens with
  `Assistant: <think`, the model writes its reasoning, closes it with `</think>`, then
  answers. Earlier turns are carried as `Assistant: ANSWER` only: the reasoning of a past turn
  is not part of the conversation the format describes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# A first exchange that sets the tone; both families were tuned on this turn format.
PREAMBLE = (
    "{user}: Hi! Who are you?\n\n"
    "{bot}: Hello! I am an AI assistant running on this computer. I answer questions clearly "
    "and honestly, and I say so when I do not know something.\n\n"
)

# Format name -> (user label, assistant label).
PROMPT_FORMATS: dict[str, tuple[str, str]] = {
    "world": ("User", "Assistant"),  # World models
    "g1": ("User", "Assistant"),  # the RWKV-7 G series: World, plus the think mode
    "raven": ("User", "Bot"),  # Raven (20B vocabulary), and the byte-level test models
}
SYSTEM_LABEL = "System"
FORMATS_WITH_SYSTEM = ("world", "g1")
REASONING_FORMATS = ("g1",)
THINK_OPEN = "<think"  # how a think-mode assistant turn opens (the model writes the ">")
THINK_CLOSE = "</think>"
WORLD_VOCAB_SIZE = 65536

# G0, G1, G1a, G1a2, G1b... as a word of a model or file name: "rwkv7-g1a-2.9b-...".
_REASONING_NAME = re.compile(r"(?:^|[^a-z0-9])g[01](?:[a-z]\d?)?(?:[^a-z0-9]|$)", re.IGNORECASE)

Message = Mapping[str, str]  # {"role": "system" | "user" | "assistant", "content": text}


def is_reasoning_model(name: str) -> bool:
    """Whether a model or file name is of the RWKV-7 G series (tuned to think)."""
    return bool(_REASONING_NAME.search(name))


def clean_message(text: str) -> str:
    """A message as the format carries it: stripped, and every blank line (a turn separator
    in these formats) replaced by a single newline."""
    return "\n".join(line.rstrip() for line in text.strip().splitlines() if line.strip())


def split_thinking(text: str) -> tuple[str, str]:
    """(reasoning, answer) of an assistant turn written in think mode: the text between the
    opening `<think` (its `>` included) and `</think>`, and what follows. A text without a
    think section is all answer."""
    body = text
    start = body.find(THINK_OPEN)
    if start < 0 and THINK_CLOSE not in body:
        return "", text.strip()
    if start >= 0:
        body = body[start + len(THINK_OPEN):]
    body = body.removeprefix(">")
    thinking, close, answer = body.partition(THINK_CLOSE)
    if not close:
        return thinking.strip(), ""
    return thinking.strip(), answer.strip()


@dataclass(frozen=True)
class ChatFormat:
    """The labels of one format, and the prompt text of a conversation in it."""

    name: str
    user: str
    bot: str

    @classmethod
    def named(cls, name: str) -> ChatFormat:
        user, bot = PROMPT_FORMATS[name]
        return cls(name, user, bot)

    @classmethod
    def for_model(cls, n_vocab: int, known: str = "", model_name: str = "") -> ChatFormat:
        """`known` when it names a format (from the model's catalog entry), else by vocabulary:
        the World vocabulary gets the World labels (the G series its think mode, recognised
        by name), the 20B (Raven) and byte models "Bot"."""
        world = known in ("world", "g1") or (not known and n_vocab == WORLD_VOCAB_SIZE)
        if world and is_reasoning_model(model_name):
            return cls.named("g1")
        if known in PROMPT_FORMATS:
            return cls.named(known)
        return cls.named("world" if n_vocab == WORLD_VOCAB_SIZE else "raven")

    @property
    def has_system(self) -> bool:
        return self.name in FORMATS_WITH_SYSTEM

    @property
    def reasoning(self) -> bool:
        """Tuned to think before answering (`think=True` turns)."""
        return self.name in REASONING_FORMATS

    @property
    def preamble(self) -> str:
        return PREAMBLE.format(user=self.user, bot=self.bot)

    def turn(self, message: str, think: bool = False) -> str:
        """The prompt for one user message; the reply follows it."""
        return user_turn(self, message, think)

    @property
    def stop(self) -> list[str]:
        """Where a reply ends: a blank line, or the model starting the user's next turn."""
        return ["\n\n", f"\n{self.user}:"]

    @staticmethod
    def turn_end(reply: str) -> str:
        """The reply as the conversation records it: trailing space dropped, blank line after."""
        return reply.rstrip() + "\n\n"


# ---- the format as plain functions (shared by the chat and an HTTP chat endpoint) ----


def system_turn(fmt: ChatFormat, text: str) -> str:
    """The system turn; a format without one has none to give (ValueError)."""
    if not fmt.has_system:
        raise ValueError(f"the {fmt.name} chat format has no system turn")
    return f"{SYSTEM_LABEL}: {clean_message(text)}\n\n"


def opening(fmt: ChatFormat, system: str | None = None) -> str:
    """How a conversation starts: the system turn when there is a system prompt, else the
    preamble exchange that sets the tone."""
    if system is not None and system.strip():
        return system_turn(fmt, system)
    return fmt.preamble


def reply_opening(fmt: ChatFormat, think: bool = False) -> str:
    """Where the assistant's reply begins (`Assistant: <think` in think mode)."""
    if think and fmt.bot != "Assistant":  # the think mode exists in the World formats only
        raise ValueError(f"the {fmt.name} chat format has no think mode")
    return f"{fmt.bot}: {THINK_OPEN}" if think else f"{fmt.bot}:"


def user_record(fmt: ChatFormat, message: str) -> str:
    return f"{fmt.user}: {clean_message(message)}\n\n"


def user_turn(fmt: ChatFormat, message: str, think: bool = False) -> str:
    """A user message and the opening of the reply."""
    return user_record(fmt, message) + reply_opening(fmt, think)


def assistant_record(fmt: ChatFormat, answer: str) -> str:
    """A past assistant turn as the conversation carries it: the answer only (any reasoning
    dropped), blank lines inside folded, and the blank line that ends the turn."""
    _thinking, text = split_thinking(answer)
    return f"{fmt.bot}: {clean_message(text)}\n\n"


def build_prompt(fmt: ChatFormat, messages: Iterable[Message], think: bool = False,
                 preamble: bool = True) -> str:
    """The prompt for a conversation given as messages (`role`, `content`), ending where the
    assistant's next reply begins. System messages make the system turn (where the format
    has one); with none, the preamble opens the conversation unless `preamble=False`."""
    messages = list(messages)
    systems = [m["content"] for m in messages if m["role"] == "system"]
    parts = [opening(fmt, "\n".join(systems)) if systems else fmt.preamble if preamble else ""]
    for message in messages:
        role, content = message["role"], message["content"]
        if role == "user":
            parts.append(user_record(fmt, content))
        elif role == "assistant":
            parts.append(assistant_record(fmt, content))
        elif role != "system":
            raise ValueError(f"unknown message role {role!r} (system, user or assistant)")
    parts.append(reply_opening(fmt, think))
    return "".join(parts)


def parse_turns(fmt: ChatFormat, text: str) -> list[dict[str, str]]:
    """The messages of a conversation's text (the inverse of `build_prompt` for complete
    turns): one per `Label: text` block between blank lines."""
    roles = {fmt.user: "user", fmt.bot: "assistant", SYSTEM_LABEL: "system"}
    messages = []
    for block in text.split("\n\n"):
        label, sep, content = block.partition(":")
        if sep and label in roles:
            messages.append({"role": roles[label], "content": content.strip()})
        elif block.strip() and messages:
            messages[-1]["content"] += "\n\n" + block.strip()
    return messages
