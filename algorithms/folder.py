"""The algorithms of this package offered to folder sites (`aia.folder`), by name.

Found by `aia.folder.registry` through the ``aia.folder`` entry points declared in
``pyproject.toml``; the GLM's names (``glm.*``) are registered by `algorithms.glm.folder_protocol`.
"""

from aia.folder.registry import npz_problem, register

# The manual's quick start: SGD on rows (A, b) of a least-squares problem.
register("sgd", "algorithms.sgd:SGD", problem=npz_problem("algorithms.sgd:LRMSE"))
