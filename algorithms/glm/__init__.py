"""Federated generalized linear models across sites that keep their rows: Fisher scoring, or
gradient descent (``method="gradient"``, `GradientDescent`).

>>> from algorithms import glm
>>> res = glm.fit("admit ~ gre + gpa + C(rank)", sites=["a.csv", "b.csv", "c.csv"],
...               family="binomial")                                    # doctest: +SKIP
>>> print(res.summary())                                                # doctest: +SKIP

`fit` runs the whole analysis; `FisherScoring` (or `GradientDescent`) is the `aia`
algorithm behind it, which a user can also pass to `aia.start` with `Site` objects as the
workers' problems:

>>> import aia
>>> paths = ["a.csv", "b.csv", "c.csv"]
>>> alg = glm.FisherScoring("admit ~ gre + gpa + C(rank)", family="binomial", n_sites=3)
>>> h = aia.start(alg, lambda pid: glm.Site(paths[pid - 1]) if pid else None,
...               {"tol": 1e-8, "maxit": 25}, cluster=3, synchronous=True)  # doctest: +SKIP
>>> h.params, h.deviance, h.converged                                 # doctest: +SKIP

(`fit` adds what needs more passes over the sites: the union of the categorical levels,
the global moments of ``center``/``scale``, the intercept-only fit behind the null
deviance with an offset, and the log-likelihood.)

The exceptions (a site's refusals and errors reach the central as data and are raised there,
naming the site: `algorithms.glm.site_errors`)::

    ValueError
     ├── FormulaError              the formula is malformed or outside the whitelist
     │                             (BoundsError, too large for a site, becomes one)
     ├── SiteError                 a site cannot take part (a missing column, an invalid
     │    └── BuildLimitError      response...); its design would be too large to build
     ├── DesignMismatchError       the sites built different design columns
     └── SingularDesignError       X'WX is singular: it names the aliased columns (also a
                                   numpy LinAlgError)
    PermissionError (OSError)
     └── PrivacyError              a site's privacy guard refused (its guard and threshold)
    FloatingPointError
     └── NonFiniteError            no valid coefficients: non-finite sums or fitted values
    RuntimeError
     ├── SecureAggregationError    secure aggregation: a malformed masked answer, too few
     │                             sites left, a failure it cannot go on from
     ├── CoordinateDescentError    glmnet's coordinate descent did not converge
     ├── GlmnetConvergenceError    glmnet's IRLS at one lambda did not settle
     └── folder.SiteFailedError    a folder site raised in a pass besides the iterations

Warnings: statsmodels' ``ConvergenceWarning`` and ``PerfectSeparationWarning`` (the result's
``notes`` say the same). Over a synced folder, `aia.folder.SitesTimeoutError` names the
sites that owe an answer.
"""

from .anova import anova
from .base import DesignMismatchError, NonFiniteError
from .design import Design, FormulaError, inspect_formula
from .families import Family, resolve
from .fisher import FisherScoring
from .fit import fit
from .glmnet import CVGlmnet, GlmnetPath, cv_glmnet, glmnet
from .gradient import GradientDescent, GradientQuery, Score
from .guards import Guards, PrivacyError
from .linalg import SingularDesignError
from .messages import Contribution, Query
from .results import GLMResults, Summary
from .site import Site, SiteError, SiteGroup

__all__ = sorted([
    "CVGlmnet",
    "Contribution",
    "Design",
    "DesignMismatchError",
    "Family",
    "FisherScoring",
    "FormulaError",
    "GLMResults",
    "GlmnetPath",
    "GradientDescent",
    "GradientQuery",
    "Guards",
    "NonFiniteError",
    "PrivacyError",
    "Query",
    "Score",
    "SingularDesignError",
    "Site",
    "SiteError",
    "SiteGroup",
    "Summary",
    "anova",
    "cv_glmnet",
    "fit",
    "glmnet",
    "inspect_formula",
    "resolve",
])
