"""The steps of a kernel plan. Each kind of step knows what it reads, what it computes, its
operation count and the code it becomes. ``base``: what a step is; ``dense``:

* ``Contraction``: a matrix product ``A^T B`` and its kin, given to NumPy's BLAS;
* ``LinearSolve``: ``A^{-1} B`` by LU factorisation (LAPACK);
* ``Determinant``: ``det A`` or ``log |det A|`` by LU, or Cholesky for a declared SPD ``A``;
* ``RowStats``: the row (or column) maximum and sum of exponentials that ``softmax`` and
  ``logsumexp`` need, in one pass per row with a max shift;
* ``LoopGroup``: one fused loop nest over an iteration space, computing every elementwise node
  and every reduction over that space as scalar temporaries;
* ``RowStream``: ``X v``, a loop over X's rows and ``X^T r`` in one pass over the rows;
* ``MatrixFunctionStep``: a norm, singular values, ``eigh`` or a Cholesky factor by LAPACK.

``windows`` (computed positions, ``symdl.ir.indexed``):

* ``ScatterLoop``: a scatter (col2im, a transposed convolution) or a scatter-add of rows;
* ``RowMax``: a maximum along an axis and its first arg max (max pooling);
* ``WindowProduct``: a window times a tensor as im2col + BLAS, one image at a time.

``batched``: ``BatchedContraction``, a product of tensors of any rank as matrix products
(one GEMM, or a loop of GEMMs over batch labels), its operands viewed or permuted into stacks
of matrices.

``scan``: ``ScanStep``, a recurrence as a loop over ``t`` around its step's code.

``emit(gen, number)`` returns the driver's lines for the step and adds its jitted functions
to ``gen.functions``; ``gen`` is the module's ``codegen.Generator`` (naming and reading).
"""

from symdl.kernels.steps.base import Read, Step, dispatch, jit_decorator, stats_key
from symdl.kernels.steps.batched import BatchedContraction, batched_contraction
from symdl.kernels.steps.dense import (
    Contraction,
    Determinant,
    LinearSolve,
    LoopGroup,
    MatrixFunctionStep,
    RowStats,
    RowStream,
    Symmetric,
)
from symdl.kernels.steps.scan import ScanStep
from symdl.kernels.steps.windows import (
    RowMax,
    ScatterGemm,
    ScatterLoop,
    WindowProduct,
    inside_by_range,
    owning_axes,
    scatter_gemm,
    window_product,
)

STEP_KINDS: tuple[type[Step], ...] = (Contraction, LoopGroup, RowStats, LinearSolve,
                                     Determinant, RowStream, MatrixFunctionStep, ScatterLoop,
                                     RowMax, WindowProduct, ScanStep, BatchedContraction)
"""Every kind of step, in the order the module's docstring counts them."""

__all__ = ["STEP_KINDS", "BatchedContraction", "Contraction", "Determinant", "LinearSolve",
           "LoopGroup", "MatrixFunctionStep", "Read", "RowMax", "RowStats", "RowStream", "ScanStep",
           "ScatterGemm", "ScatterLoop", "Step", "Symmetric", "WindowProduct", "dispatch",
           "batched_contraction", "inside_by_range", "jit_decorator", "owning_axes",
           "scatter_gemm", "stats_key", "window_product"]
