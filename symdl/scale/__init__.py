"""Beyond one machine: a derivation's kernels over data chunked by rows.

* ``separable``: decides from the derivation whether its loss is a sum or mean over the batch
  dimension with no term coupling rows, and how chunks of rows combine (no Dask needed);
* ``optimize``: full-batch gradient descent with any ``symdl.optimizers`` rule, L-BFGS and
  Newton-CG over any loss that gives values, gradients and Hessian-vector products;
* ``dask``: ``DaskLoss``, the chunked evaluation over ``dask.array`` data on a Dask cluster
  (the optional extra ``pip install symdl[dask]``).

``symdl.scale.dask`` imports Dask; the other modules do not, so that the analysis and the
optimizers work (and are tested) without it.
"""

from __future__ import annotations

from symdl.scale.optimize import TrainResult, gradient_descent, lbfgs, newton_cg
from symdl.scale.separable import NotRowSeparableError, RowSplit, row_split

__all__ = ["NotRowSeparableError", "RowSplit", "TrainResult", "gradient_descent", "lbfgs",
           "newton_cg", "row_split"]
