"""ionstream subcommands, one module each (see ionstream/cli.py)."""
