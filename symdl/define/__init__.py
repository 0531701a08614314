"""Stage 3, define: SymPy definitions into the IR.

``translate`` turns plain SymPy (matrix or index notation) into IR; ``vocabulary``,
``optimizers`` and ``schedules`` build such SymPy expressions for layers, losses, optimizer
updates and learning-rate schedules; ``limits`` refuses a definition too large to handle.
"""
