"""`python -m ionstream.cli ...` is the `ionstream` command."""
import sys

from ionstream.cli.main import build_parser, main

sys.exit(main())
