"""Stage 1, primitives: the scalar functions symdl knows (sigmoid, relu, softplus, ...) and
the SymPy objects derived results are made of."""
