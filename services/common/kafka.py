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


def fencing_producer(bootstrap: str, transactional_id: str, **extra: object) -> AIOKafkaProducer:
    """Transactional, idempotent, acks=all. Its `start()` (init_transactions) fences every earlier
    producer with the same id and aborts what it left open: one writer per id, by the broker."""
    settings: dict[str, object] = {
        "linger_ms": 5,
        "max_batch_size": 256 * 1024,
        "retry_backoff_ms": 20,
        **extra,
    }
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        transactional_id=transactional_id,
        enable_idempotence=True,
        acks="all",
        **settings,
    )
