"""`ionstream keys generate DIR`: make a CURVE key pair for the daemon or a client."""
from __future__ import annotations

import argparse
import logging

HELP = "make CURVE key pairs (encryption and authentication of the ZeroMQ sockets)"
DESCRIPTION = (
    "`ionstream keys generate DIR [--name NAME]` writes DIR/NAME.key (public: give it away) and "
    "DIR/NAME.key_secret (secret, mode 0600: keep it). The daemon uses its secret file as "
    "publish.curve_server_secret and allows the clients whose .key files are in "
    "publish.curve_clients_dir; a client passes its own .key_secret and the daemon's .key "
    "(`ionstream listen --curve-key me.key_secret --curve-server-key server.key`)."
)
log = logging.getLogger("ionstream.keys")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="keys_action", metavar="ACTION", required=True)
    gen = sub.add_parser("generate", help="write NAME.key and NAME.key_secret into DIR")
    gen.add_argument("dir", metavar="DIR", help="directory for the key files (created if missing)")
    gen.add_argument("--name", default="server", help="file name stem (default %(default)s; e.g. a client's name)")
    gen.add_argument("--force", action="store_true", help="overwrite an existing pair of that name")


def main(args: argparse.Namespace) -> int:
    from ionstream.client.keys import SecurityError, generate_keypair

    try:
        public, secret = generate_keypair(args.dir, args.name, overwrite=args.force)
    except (SecurityError, OSError) as exc:
        log.error("%s", exc)
        return 1
    print(f"public key: {public}")
    print(f"secret key: {secret}  (mode 0600; never copy it off this machine)")
    if args.name == "server":
        print("daemon config:  [publish] curve_server_secret = \"%s\"" % secret)
        print("clients need:   %s  (as --curve-server-key)" % public)
    else:
        print(f"allow it:       copy {public} into the daemon's publish.curve_clients_dir")
    return 0
