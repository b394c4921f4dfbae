"""Training side: datasets, loops, evaluation (needs the ``train`` extra)."""
