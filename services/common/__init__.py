"""What every service shares: settings, topic names, logging, auth, dead letters, Kafka clients."""
