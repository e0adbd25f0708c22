"""``python -m aia.folder``: a site of a folder session, or the end of a session.

    python -m aia.folder site --folder ~/Dropbox/model --site site1 --data site1.npz
    python -m aia.folder cancel --folder ~/Dropbox/model --session NAME --sites a,b,c

A site answers the queries of the algorithms registered in its installation (``sgd``, and
``glm.*`` with ``aia-glm site``) from its own data file, and exits when the session ends.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from . import codec
from .central import FolderCluster
from .site import serve


def read_key(path: Optional[str]) -> Optional[bytes]:
    """The shared secret in ``path`` (surrounding whitespace removed), or None."""
    if path is None:
        return None
    key = Path(path).expanduser().read_bytes().strip()
    if not key:
        raise SystemExit(f"--key-file {path}: the file is empty")
    return key


def add_site_arguments(p: argparse.ArgumentParser, min_sites: int) -> None:
    p.add_argument("--folder", required=True, help="the synced folder")
    p.add_argument("--site", required=True, help="this site's name, as the central lists it")
    p.add_argument("--data", help="this site's data file (never leaves the site)")
    p.add_argument("--session", "--model", dest="session", default=None,
                   help="serve this session only (default: the first open one naming this "
                        "site)")
    p.add_argument("--min-sites", type=int, default=min_sites,
                   help=f"refuse runs with fewer sites (default {min_sites})")
    p.add_argument("--poll", type=float, default=0.5,
                   help="seconds between looks at the folder besides file events (default "
                        "0.5; the fallback for folders that send no events)")
    p.add_argument("--no-watch", dest="watch", action="store_false",
                   help="do not wait on file events: look every --poll seconds only")
    p.add_argument("--timeout", type=float, default=None,
                   help="give up after this many seconds (default: wait for the model's end)")
    p.add_argument("--key-file", default=None,
                   help="a file holding the secret shared with the central (optional)")
    p.add_argument("--max-bytes", type=int, default=codec.MAX_BYTES,
                   help="ignore files larger than this")
    p.add_argument("--peers", default=None,
                   help="the other sites' names, comma-separated: only they count toward "
                        "--min-sites (so the central cannot invent sites)")
    p.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2),
                   help="0 warnings only, 1 progress (default), 2 every answer")


def setup_logging(verbose: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    logger = logging.getLogger("aia.folder")
    logger.addHandler(handler)
    logger.setLevel({0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}[verbose])
    logger.propagate = False


def run_site(args, allow=None, loader_options=None) -> int:
    setup_logging(args.verbose)
    peers = None if args.peers is None else [p.strip() for p in args.peers.split(",")
                                             if p.strip()]
    if args.data is not None and not Path(args.data).expanduser().is_file():
        # At once, not when the first model arrives (the session stays usable).
        print(f"site {args.site}: error: no data file {args.data} (--data: this site's own "
              f"data file)", file=sys.stderr)
        return 2
    try:
        state = serve(args.folder, args.site, args.data, session=args.session, poll=args.poll,
                      key=read_key(args.key_file), allow=allow, min_sites=args.min_sites,
                      timeout=args.timeout, max_bytes=args.max_bytes, peers=peers,
                      loader_options=loader_options, watch=args.watch)
    except KeyboardInterrupt:
        print(f"site {args.site}: interrupted", file=sys.stderr)
        return 130
    return 0 if state in ("finished", "cancelled") else 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aia.folder",
                                     description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add_site_arguments(sub.add_parser("site", help="serve as a site"), min_sites=1)
    cancel = sub.add_parser("cancel", help="cancel a session: its sites exit")
    cancel.add_argument("--folder", required=True)
    cancel.add_argument("--session", required=True)
    cancel.add_argument("--sites", required=True, help="the session's sites, comma-separated")
    cancel.add_argument("--key-file", default=None)
    args = parser.parse_args(argv)
    if args.command == "site":
        return run_site(args)
    cluster = FolderCluster(args.folder, args.sites.split(","), session=args.session,
                            key=read_key(args.key_file))
    cluster.cancel("cancelled from the command line")
    return 0


if __name__ == "__main__":
    sys.exit(main())
