"""The ``compress-explorer`` console script: ``streamlit run <repo>/app.py`` with any extra arguments.

``compress-explorer --server.port 8600`` passes ``--server.port 8600`` on to Streamlit. Streamlit
reads ``.streamlit/config.toml`` from the working directory, so the app runs from the repository
folder, where the project's settings (upload cap, local-only address, no usage statistics, no file
watcher) live. ``compress-explorer --dev`` is for working on the app itself: it turns Streamlit's
file watcher back on and reruns the page when a source file is saved.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

APP = Path(__file__).resolve().parent.parent / "app.py"
DEV_FLAG = "--dev"
DEV_OPTIONS = ("--server.fileWatcherType", "auto", "--server.runOnSave", "true")
"""What ``--dev`` adds: watch the source files and rerun on save (the config file turns both off)."""


def streamlit_argv(args: list[str]) -> list[str]:
    """The ``streamlit run`` command line for the launcher's arguments (``--dev`` replaced by ``DEV_OPTIONS``)."""
    options = [arg for arg in args if arg != DEV_FLAG]
    dev = list(DEV_OPTIONS) if DEV_FLAG in args else []
    return ["streamlit", "run", str(APP), *dev, *options]


def main(argv: list[str] | None = None) -> int:
    """Run the app with Streamlit in this process; returns Streamlit's exit code."""
    from streamlit.web import cli

    args = sys.argv[1:] if argv is None else argv
    os.chdir(APP.parent)
    sys.argv = streamlit_argv(args)
    try:
        cli.main()
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
