"""Kafka clients configured the one way windowgate needs them."""

from __future__ import annotations

from aiokafka import AIOKafkaProducer


def durable_producer(bootstrap: str, **extra: object) -> AIOKafkaProducer:
    """Idempotent, acks=all: an acknowledged record is on every in-sync replica, once (I7)."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        enable_idempotence=True,
        acks="all",
        linger_ms=2,
        **extra,
    )
