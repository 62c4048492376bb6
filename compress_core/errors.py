"""The project's one user-facing exception type."""


class CompressError(ValueError):
    """A problem with the user's input, stated in one line.

    The message names the file, layer or value at fault and what is allowed; the CLI prints it and
    exits with code 2, the app shows it with ``st.error``.
    """
