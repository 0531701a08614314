"""Time and size of printing the backprop equations and closed-form gradients of two
definitions (issue 15, item 17): ``python benchmarks/print_cost.py [bn|gru] [limit_s]``.

Measured on the shared 2-core machine (seconds; characters of ``symdl.printing.plain.plain``):

====================  =========================  ==========================
                      before (e947fde)           after
====================  =========================  ==========================
BN+ReLU one-liner     equations() 75-132 s,      equations() 0.09 s,
                      4 eqs, 2,305 chars         8 eqs, 441 chars
  gradient(X)         65 s, 971 chars            0.9 s, 995 chars
  gradient(W)         35 s, 973 chars            0.5 s, 995 chars
3-step GRU (steps)    equations() 0.25 s,        0.09 s, 1,107 chars
                      1,131 chars
  gradient(bz)        225 s, 182,784 chars       0.12 s, 3,708 chars
  gradient(Wz)        102 s, 182,803 chars       0.10 s, 3,721 chars
====================  =========================  ==========================
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from print_cost_models import bn_relu_one_liner, gru_named_steps  # noqa: E402

import symdl  # noqa: E402
from symdl.printing.plain import plain  # noqa: E402


def main(which: str = "bn", limit: int = 60) -> None:
    def alarm(*_):
        raise TimeoutError

    signal.signal(signal.SIGALRM, alarm)
    definition, params = bn_relu_one_liner() if which == "bn" else gru_named_steps(3)
    der = symdl.derive(definition, params)
    start = time.perf_counter()
    equations = der.equations()
    chars = sum(len(plain(e.rhs)) for e in equations)
    print(f"equations: {time.perf_counter() - start:.2f} s, {len(equations)} equations, "
          f"{chars} characters")
    for p in params if which == "bn" else [params[6], params[0]]:
        start = time.perf_counter()
        signal.alarm(limit)
        try:
            text = plain(der.gradient(p))
            signal.alarm(0)
            print(f"gradient({p}): {time.perf_counter() - start:.2f} s, {len(text)} characters")
        except TimeoutError:
            print(f"gradient({p}): more than {limit} s")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bn", int(sys.argv[2]) if len(sys.argv) > 2 else 60)
