"""Ready derivations, one topic per file; ``symdl list`` shows them."""
