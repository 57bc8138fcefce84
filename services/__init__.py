"""windowgate services: thin shells around the pure core (see README, Architecture)."""
