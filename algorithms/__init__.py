"""Algorithms built on `aia`: SGD (the manual's quick start) and GLMs across sites (`glm`)."""

from .sgd import LRMSE, SGD, make_lrmse_problem

__all__ = ["LRMSE", "SGD", "make_lrmse_problem"]
