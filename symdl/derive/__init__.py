"""Stage 4, derive: derivatives on the IR, reverse mode (adjoints, backprop) and forward mode
(tangents, Hessian-vector products)."""
