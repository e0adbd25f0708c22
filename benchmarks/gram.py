"""The BLAS gram of a round's block buffer, the way `algorithms.glm.rounds` sums it.

    python benchmarks/gram.py [--columns 6 11 16 21 22 23 31 41]

For each width q (columns of [sqrt(W) X, sqrt(W) z], so p + 1), on one core, in
milliseconds per 500k rows, the block hot in cache:

- one ``dsyrk`` of all q columns at the block rows `rounds.block_rows` gives (an odd
  multiple of 256 rows) and at one more multiple of 256 (an even one: the buffer's columns
  are then a multiple of 4 KB apart);
- ``dsyrk`` of the first m columns and ``dgemm`` of the other q - m against all q, for each
  m a multiple of 4, and the m that `rounds.gram_split` picks.

Prints a table and writes benchmarks/results/gram.json.
"""

from __future__ import annotations

import argparse
import json
import timeit
from pathlib import Path

import numpy as np
from scipy.linalg.blas import dgemm, dsyrk
from threadpoolctl import threadpool_limits

from algorithms.glm import rounds


def per_500k(fn, rows: int) -> float:
    seconds = min(timeit.repeat(fn, number=50, repeat=5)) / 50
    return seconds * 1e3 * 500_000 / rows


def split_time(A: np.ndarray, m: int) -> float:
    q = A.shape[1]
    top = np.zeros((m, m), order="F")
    rest = np.zeros((q - m, q), order="F")

    def run():
        dsyrk(1.0, A[:, :m], beta=1.0, c=top, trans=1, overwrite_c=1)
        dgemm(1.0, A[:, m:], A, beta=1.0, c=rest, trans_a=1, overwrite_c=1)
    return per_500k(run, len(A))


def measure(q: int, rng) -> dict:
    rows = rounds.block_rows(q - 1)
    A = np.asfortranarray(rng.standard_normal((rows, q)))
    even = np.asfortranarray(rng.standard_normal((rows + rounds.SUB_ROWS, q)))
    C = np.zeros((q, q), order="F")
    out = {"q": q, "rows": rows,
           "syrk": per_500k(lambda: dsyrk(1.0, A, beta=1.0, c=C, trans=1, overwrite_c=1), rows),
           "syrk_even_rows": per_500k(
               lambda: dsyrk(1.0, even, beta=1.0, c=C, trans=1, overwrite_c=1), len(even)),
           "splits": {m: split_time(A, m) for m in range(4, q, 4)},
           "chosen": rounds.gram_split(q)}
    out["chosen_ms"] = out["splits"].get(out["chosen"], out["syrk"])
    return out


def main(argv=None) -> list:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--columns", type=int, nargs="+",
                        default=[6, 11, 16, 21, 22, 23, 31, 41])
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    with threadpool_limits(1):
        results = [measure(q, rng) for q in args.columns]
    print(f"{'q':>4}{'rows':>7}{'dsyrk':>8}{'even rows':>11}{'chosen m':>10}{'split':>8}"
          f"{'ratio':>7}   other splits (m: ms)")
    for r in results:
        others = " ".join(f"{m}:{t:.1f}" for m, t in r["splits"].items() if m != r["chosen"])
        print(f"{r['q']:>4}{r['rows']:>7}{r['syrk']:>8.2f}{r['syrk_even_rows']:>11.2f}"
              f"{r['chosen']:>10}{r['chosen_ms']:>8.2f}{r['chosen_ms'] / r['syrk']:>7.2f}   {others}")
    out = Path(__file__).parent / "results" / "gram.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
