"""The project's one user-facing exception type, and the one way to quote another exception."""


class CompressError(ValueError):
    """A problem with the user's input, stated in one line.

    The message names the file, layer or value at fault and what is allowed; the CLI prints it and
    exits with code 2, the app shows it with ``st.error``.
    """


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of ``exc``'s message (at most ``limit`` characters), or its type name.

    Library errors can span many lines (ONNX Runtime, torch); a one-line message quotes only this.
    """
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()[:limit]
    return type(exc).__name__
