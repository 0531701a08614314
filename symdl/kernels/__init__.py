"""Stage 6, kernels: IR -> a plan of steps -> Numba source -> a cached, jitted ``Kernel``.

``plan`` orders and fuses the steps, ``codegen`` writes the source, ``jit`` keeps the
content-addressed file cache, ``kernel`` validates arguments and runs the code,
``compilable`` refuses at derive time what could not compile, ``progress`` reports long
compiles.
"""
