"""`python -m rwkv_cli` is `rwkv-cpp`."""

from .app.cli import main

if __name__ == "__main__":
    main()
