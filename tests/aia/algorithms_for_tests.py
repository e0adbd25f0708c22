"""Small algorithms whose runs have known outcomes, shared by the engine's tests."""

from __future__ import annotations

import numpy as np

import aia


class Counter(aia.AbstractAlgorithm):
    """The query is the number of central steps so far; a worker answers with its pid.

    It keeps, on the central, the workers in the order their answers were consumed.
    """

    def __init__(self):
        self.q = 0
        self.seen = []

    def initialize(self, problem):
        self.q = 0
        return self.q

    def answer(self, q, problem):
        return problem if problem is not None else 0

    def central_step(self, a, worker, problem):
        assert a == worker, "an answer must come back to the central with its worker's id"
        self.seen.append(worker)
        self.q += 1
        return self.q

    def sync_central_step(self, answers, workers, problem):
        assert list(answers) == list(workers)
        self.seen.append(list(workers))
        self.q += 1
        return self.q


def pid_problem(pid):
    """Each process's problem is its own pid."""
    return pid


class GradientDescent(aia.AbstractAlgorithm):
    """Full-gradient descent on a least-squares problem split over workers (LRMSE blocks).

    Workers answer with the gradient of their block's summed loss and their row count; the
    synchronous step divides the summed gradient by the total rows: exact gradient descent.
    """

    def __init__(self, stepsize, n):
        self.stepsize = stepsize
        self.x = np.zeros(n)

    def initialize(self, problem):
        return self.x

    def answer(self, q, problem):
        return problem.A.T @ (problem.A @ q - problem.b), problem.m

    def sync_central_step(self, answers, workers, problem):
        g = sum(a[0] for a in answers) / sum(a[1] for a in answers)
        self.x = self.x - self.stepsize * g
        return self.x


class Precision(aia.AbstractAlgorithm):
    """The manual's SGDbis: the distance between the last two iterates, with every hook."""

    def __init__(self, stepsize):
        self.stepsize = stepsize
        self.precision = np.inf
        self.precisions = []
        self.x = None

    def initialize(self, problem):
        self.x = np.ones(problem.n)
        return self.x

    def answer(self, q, problem):
        return self.stepsize * problem.gradient(q)

    def central_step(self, a, worker, problem):
        q = self.x - a
        self.precision = float(np.linalg.norm(q - self.x))
        self.x = q
        return q

    def sync_central_step(self, answers, workers, problem):
        return self.central_step(np.mean(answers, axis=0), 0, problem)

    def stopnow(self, stopat):
        return "precision" in stopat and self.precision <= stopat["precision"]

    def savenow(self, saveat):
        return "precision" in saveat and self.precision <= saveat["precision"]

    def savevalues(self):
        self.precisions.append(self.precision)

    def report(self):
        return {"precisions": self.precisions, "final": self.x}

    def progress(self, stopat):
        if "precision" not in stopat:
            return 0.0
        if self.precision == 0:
            return 1.0
        return min(1.0, stopat["precision"] / self.precision)

    def showvalues(self):
        return [("precision", round(self.precision, 6))]
