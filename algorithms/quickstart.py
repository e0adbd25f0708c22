"""The Julia manual's quick start: asynchronous SGD on a least-squares problem split over
local worker processes.

    python -m algorithms.quickstart [--workers N] [--epochs E] [--sync]
"""

from __future__ import annotations

import argparse

import numpy as np

import aia
from algorithms.sgd import LRMSE, SGD, make_lrmse_problem


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2000)
    parser.add_argument("--sync", action="store_true", help="run synchronously")
    args = parser.parse_args(argv)

    make_problem = make_lrmse_problem(n_rows=100, n_features=10, noise=0.1, seed=0)
    blocks = [make_problem(pid) for pid in range(1, args.workers + 1)]
    pooled = LRMSE(np.vstack([p.A for p in blocks]), np.concatenate([p.b for p in blocks]))
    x_star = np.linalg.lstsq(pooled.A, pooled.b, rcond=None)[0]

    sgd = SGD(stepsize=0.2 / pooled.L, seed=1)
    history = aia.start(sgd, make_problem, {"epoch": args.epochs, "time": 60},
                        saveat={"epoch": max(1, args.epochs // 10)}, cluster=args.workers,
                        synchronous=args.sync)

    print(f"\n{'synchronous' if args.sync else 'asynchronous'} SGD on {args.workers} workers: "
          f"{history.iterations[-1]} iterations, {history.epochs[-1]} epochs in "
          f"{history.timestamps[-1]:.2f} s")
    print(f"answers per worker: {history.answer_count}")
    print(f"{'epoch':>8} {'loss':>12} {'distance to least squares':>28}")
    for epoch, x in zip(history.epochs, history.queries):
        print(f"{epoch:>8} {pooled.loss(x):>12.6f} {np.linalg.norm(x - x_star):>28.6f}")
    print(f"least-squares loss (the floor): {pooled.loss(x_star):.6f}")


if __name__ == "__main__":
    main()
