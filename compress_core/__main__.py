"""Entry point for ``python -m compress_core``."""

import sys

from .cli import main

sys.exit(main())
