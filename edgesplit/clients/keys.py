"""`python -m edgesplit.clients.keys K [--secret-file PATH]`: client K's own secret, derived from the
run secret ($EDGESPLIT_SECRET, or the file), for the cloud's operator to hand to edge host K as its
$EDGESPLIT_CLIENT_SECRET (edgesplit.clients.hosts). It proves nothing about any other client."""
import argparse
import os
import sys
from typing import List, Optional

from edgesplit.backends.remote import auth
from edgesplit.errors import ConfigError


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgesplit.clients.keys", description=__doc__)
    parser.add_argument("client", type=int, help="the client's index, 0..clients.count-1")
    parser.add_argument("--secret-file", help="a file holding the run secret (else $EDGESPLIT_SECRET)")
    args = parser.parse_args(argv)
    try:
        if args.client < 0:
            raise ConfigError(f"client {args.client} is invalid: must be >= 0")
        if not (args.secret_file or os.environ.get(auth.ENV)):
            raise ConfigError(f"client {args.client}'s secret derives from the run secret: set {auth.ENV} "
                              f"(on the cloud's host) or give --secret-file PATH")
        secret = auth.resolve_secret(None, False, args.secret_file)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(auth.client_secret(secret, args.client))
    return 0


if __name__ == "__main__":
    sys.exit(main())
