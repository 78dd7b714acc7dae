"""The chat turn formats RWKV models were tuned on: how a conversation becomes a prompt.

A turn is `{user}: {message}\\n\\n{bot}:`, the reply ends at a blank line, and a first exchange
(the preamble) sets the tone. The labels differ by family. Shared by everything that builds
chat prompts (the terminal chat, an HTTP chat endpoint), so a fix lands once.
"""

from __future__ import annotations

from dataclasses import dataclass

# A first exchange that sets the tone; both families were tuned on this turn format.
PREAMBLE = (
    "{user}: Hi! Who are you?\n\n"
    "{bot}: Hello! I am an AI assistant running on this computer. I answer questions clearly "
    "and honestly, and I say so when I do not know something.\n\n"
)

# Format name -> (user label, assistant label).
PROMPT_FORMATS: dict[str, tuple[str, str]] = {
    "world": ("User", "Assistant"),  # World and G1 models
    "raven": ("User", "Bot"),  # Raven (20B vocabulary), and the byte-level test models
}
WORLD_VOCAB_SIZE = 65536


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
    def for_model(cls, n_vocab: int, known: str = "") -> ChatFormat:
        """`known` when it names a format (from the model's catalog entry), else by vocabulary:
        the World vocabulary gets the World labels, the 20B (Raven) and byte models "Bot"."""
        if known in PROMPT_FORMATS:
            return cls.named(known)
        return cls.named("world" if n_vocab == WORLD_VOCAB_SIZE else "raven")

    @property
    def preamble(self) -> str:
        return PREAMBLE.format(user=self.user, bot=self.bot)

    def turn(self, message: str) -> str:
        """The prompt for one user message; the reply follows it."""
        # A blank line ends a turn in this format, so the message must not contain one.
        message = "\n".join(line for line in message.strip().splitlines() if line.strip())
        return f"{self.user}: {message}\n\n{self.bot}:"

    @property
    def stop(self) -> list[str]:
        """Where a reply ends: a blank line, or the model starting the user's next turn."""
        return ["\n\n", f"\n{self.user}:"]

    @staticmethod
    def turn_end(reply: str) -> str:
        """The reply as the conversation records it: trailing space dropped, blank line after."""
        return reply.rstrip() + "\n\n"
