"""The ``compress-explorer`` console script: ``streamlit run <repo>/app.py`` with any extra arguments.

``compress-explorer --server.port 8600`` passes ``--server.port 8600`` on to Streamlit. Streamlit
reads ``.streamlit/config.toml`` from the working directory, so the app runs from the repository
folder, where the project's settings (upload cap, local-only address, no usage statistics) live.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

APP = Path(__file__).resolve().parent.parent / "app.py"


def main(argv: list[str] | None = None) -> int:
    """Run the app with Streamlit in this process; returns Streamlit's exit code."""
    from streamlit.web import cli

    args = sys.argv[1:] if argv is None else argv
    os.chdir(APP.parent)
    sys.argv = ["streamlit", "run", str(APP), *args]
    try:
        cli.main()
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
