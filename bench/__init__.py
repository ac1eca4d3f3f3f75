"""Benchmarks of the portal's hot paths; ``make bench`` runs them all (see ``bench.run_all``)."""
