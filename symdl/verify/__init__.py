"""Stage 7, verify: every kernel output against finite differences and an independent
reference (``check``, ``reference``), with the V curve of errors against step size (``plot``)."""
