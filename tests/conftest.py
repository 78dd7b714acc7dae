from helpers import tokenizer_20b  # noqa: F401  (a pytest fixture shared by all tests)
