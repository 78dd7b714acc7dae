"""`python -m rwkv_cli.engine --lib-path`: where our engine is, as a plain C library."""

import sys

from .library import main

sys.exit(main())
