"""atheris target: the chat's `/load FILE` (a conversation written by `/save`, an .npz).

Any bytes as the file: ChatSession.load either takes a float32 state of the model's length
and a text history, or raises ChatError with a message (the chat prints it and goes on); any
other exception is a finding. The session stands on a stand-in model: load() reads only its
state length.

    python tests/fuzz/fuzz_chat_load.py [libFuzzer options] CORPUS...   (tests/fuzz/run.sh)
"""

import os
import sys
import tempfile
import types

import atheris
import numpy  # imported before instrumentation: only our code and zipfile are instrumented
import rich  # noqa: F401

with atheris.instrument_imports():
    import zipfile  # noqa: F401  (np.load reads .npz through it)

    from rwkv_cli.app.chat import ChatError, ChatSession

STATE_LEN = 40  # as tests/fuzz/make_seeds.py writes the seeds
PATH = os.path.join(tempfile.mkdtemp(prefix="rwkv-fuzz-chat-"), "conversation.npz")
SESSION = ChatSession.__new__(ChatSession)
SESSION.model = types.SimpleNamespace(state_len=STATE_LEN)


def test_one_input(data: bytes) -> None:
    with open(PATH, "wb") as f:
        f.write(data)
    SESSION.state, SESSION.history = None, None
    try:
        SESSION.load(PATH)
    except ChatError as exc:
        assert str(exc) and SESSION.state is None
        return
    assert SESSION.state.dtype == numpy.float32 and SESSION.state.shape == (STATE_LEN,)
    assert isinstance(SESSION.history, str)


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
