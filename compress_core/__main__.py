"""Entry point for ``python -m compress_core``."""

import sys

from compress_core.cli import main

sys.exit(main())
