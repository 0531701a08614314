"""Stage 1, primitives: the scalar functions symdl knows (sigmoid, relu, silu, ...), one entry
each in ``registry.PRIMITIVES`` (derivative, NumPy and Numba implementations, kinks, names,
stable rewrites), and the SymPy objects derived results are made of."""
