"""The GLM demo: a logistic regression over three sites, each in its own worker process.

    python -m algorithms.glm.demo [--asynchronous] [--verbose 2]

The rows of UCLA's graduate admissions data (admit, gre, gpa, rank) are split across three
CSV files shipped with the package; each worker reads its own file, and only sums reach the
central. The result is R's ``glm(admit ~ gre + gpa + factor(rank), family = binomial)``.
"""

from __future__ import annotations

import argparse
import os
from importlib import resources
from typing import Optional, Sequence

from .fit import fit

FORMULA = "admit ~ gre + gpa + C(rank)"


def sites() -> list[str]:
    """The paths of the three example sites."""
    data = resources.files("algorithms.glm") / "data"
    return [str(data / f"admissions_{s}.csv") for s in "abc"]


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m algorithms.glm.demo",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--asynchronous", action="store_true",
                        help="re-solve as each site answers instead of waiting for all")
    parser.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2))
    args = parser.parse_args(argv)
    # rank is a number in these files, so C(rank) sends its values (1-4) to the central as
    # level names, which a site does only with its operator's consent. The demo's three sites
    # are files on this machine and you are their operator; a real site decides for itself.
    os.environ.setdefault("GLM_ALLOW_NUMERIC_LEVELS", "1")
    print(f"Fitting {FORMULA!r} (binomial) over 3 sites on local worker processes...")
    result = fit(FORMULA, sites(), family="binomial", synchronous=not args.asynchronous,
                 verbose=args.verbose)
    print(result.summary())


if __name__ == "__main__":
    main()
