"""CLI subcommands; each module registers one (see ``compress_core.cli``)."""
