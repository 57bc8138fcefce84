"""windowgate: the pure policy core (normalise, fold, decide, dated rules) and its command line."""
