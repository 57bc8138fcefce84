"""Ingest's partitioner puts every key where aiokafka's default partitioner (Kafka's) puts it."""

from __future__ import annotations

import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.events import event_key
from services.ingest.partitioner import KeyPartitioner, murmur2

KAFKA = DefaultPartitioner()


@settings(max_examples=1000)
@given(st.binary(max_size=80))
def test_murmur2_is_kafkas(data: bytes) -> None:
    assert murmur2(data) == aiokafka_murmur2(data)


def test_murmur2_of_every_length_up_to_a_few_words() -> None:
    data = bytes(range(256))
    for end in range(40):
        assert murmur2(data[:end]) == aiokafka_murmur2(data[:end])


@settings(max_examples=500)
@given(st.binary(min_size=1, max_size=60), st.integers(1, 64), st.integers(0, 3))
def test_a_key_goes_to_the_default_partition_cached_or_not(
    key: bytes, count: int, capacity: int
) -> None:
    partitions = list(range(count))
    ours = KeyPartitioner(capacity)
    expected = KAFKA(key, partitions, partitions)
    assert ours(key, partitions, partitions) == expected
    assert ours(key, partitions, partitions) == expected  # from the cache, when it keeps it
    assert ours(key, partitions[:1], partitions) == KAFKA(key, partitions[:1], partitions)


def test_user_keys_of_meta_ids_go_where_kafka_puts_them() -> None:
    ours = KeyPartitioner(capacity=100)
    partitions = list(range(8))
    for n in range(1_000):  # more keys than the cache holds: it is emptied and refilled
        key = event_key("682498171943165", str(1_000_000_000_000_000 + n * 7_919)).encode()
        assert ours(key, partitions, partitions) == KAFKA(key, partitions, partitions)


def test_a_record_without_a_key_goes_to_an_available_partition() -> None:
    ours = KeyPartitioner()
    assert ours(None, [0, 1, 2, 3], [2]) == 2
    assert ours(None, [5], []) == 5


def test_a_negative_capacity_is_refused() -> None:
    with pytest.raises(ValueError, match="capacity"):
        KeyPartitioner(-1)
