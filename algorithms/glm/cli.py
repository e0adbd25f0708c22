"""``aia-glm``: fit a federated GLM from the command line.

    aia-glm "admit ~ gre + gpa + C(rank)" a.csv b.csv c.csv --family binomial

Each site (a CSV or Parquet file) is read by its own worker process; the summary is printed,
or the coefficient table as CSV with ``--csv``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from .fit import fit


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aia-glm", description=__doc__.splitlines()[0])
    p.add_argument("formula", help="e.g. 'y ~ x1 + C(group)'")
    p.add_argument("sites", nargs="+", help="one CSV or Parquet file per site")
    p.add_argument("--family", default="gaussian")
    p.add_argument("--link", default=None)
    for column in ("weights", "offset", "exposure", "expected"):
        p.add_argument(f"--{column}", default=None, metavar="COLUMN")
    p.add_argument("--tol", type=float, default=1e-8)
    p.add_argument("--max-iter", type=int, default=25)
    p.add_argument("--min-sites", type=int, default=1)
    p.add_argument("--asynchronous", action="store_true")
    p.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2))
    p.add_argument("--csv", action="store_true", help="print the coefficient table as CSV")
    return p


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parser().parse_args(argv)
    result = fit(args.formula, args.sites, family=args.family, link=args.link,
                 weights=args.weights, offset=args.offset, exposure=args.exposure,
                 expected=args.expected, tol=args.tol, max_iter=args.max_iter,
                 min_sites=args.min_sites, synchronous=not args.asynchronous,
                 verbose=args.verbose)
    if args.csv:
        result.summary_frame().to_csv(sys.stdout)
    else:
        print(result.summary())


if __name__ == "__main__":
    main()
