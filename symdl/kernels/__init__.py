"""Stage 6, kernels: IR -> a plan of steps -> Numba source -> a cached, jitted ``Kernel``.

``plan`` orders and fuses the steps (``steps``: each kind of step with its reads, outputs,
operation count and code; ``loops``: how a node is computed inside a loop), ``codegen``
writes the source (``driver``: the function that runs the steps; ``entry``: the module's
``compute(*, ...)``, its inputs by keyword, checked), ``rules`` is the rule
table each of these dispatches through by node kind, ``jit`` keeps the content-addressed
file cache, ``kernel`` validates arguments and runs the code, ``compilable`` refuses at
derive time what could not compile, ``progress`` reports long compiles.
"""
