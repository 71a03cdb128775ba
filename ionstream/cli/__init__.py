"""The `ionstream` console script: one module per subcommand (see `main.COMMANDS`), shared helpers in `common`."""
from ionstream.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
