"""Keys land where every Kafka client puts them: our murmur2 and resource keys, checked
against aiokafka's reference partitioner and `urllib.parse.quote` on arbitrary input."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as reference_murmur2
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.events import resource_key, resource_key_parts
from topics.partitioning import murmur2, partition_for


@settings(max_examples=2000)
@given(st.binary(max_size=300))
def test_murmur2_equals_the_kafka_clients_hash(data: bytes) -> None:
    assert murmur2(data) == reference_murmur2(data)


@settings(max_examples=500)
@given(st.binary(max_size=120), st.integers(min_value=1, max_value=1000))
def test_partition_for_equals_the_default_partitioner(key: bytes, count: int) -> None:
    partitions = list(range(count))
    assert partition_for(key, count) == DefaultPartitioner()(key, partitions, partitions)


def test_known_hashes_of_the_java_client() -> None:
    # Values from Kafka's own UtilsTest.testMurmur2 (as signed 32-bit ints there).
    cases = {b"21": -973932308, b"foobar": -790332482, b"a-little-bit-long-string": -985981536,
             b"a-little-bit-longer-string": -1486304829, b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
             b"abc": 479470107}
    for data, signed in cases.items():
        assert murmur2(data) == signed & 0xFFFFFFFF


@settings(max_examples=1000)
@given(st.lists(st.text(max_size=30), min_size=4, max_size=4))
def test_resource_key_percent_encodes_every_part(parts: list[str]) -> None:
    assert resource_key(*parts) == "/".join(quote(p, safe="") for p in parts).encode()


@settings(max_examples=1000)
@given(st.lists(st.text(max_size=30), min_size=4, max_size=4))
def test_a_resource_key_parses_back_into_its_parts(parts: list[str]) -> None:
    assert resource_key_parts(resource_key(*parts)) == tuple(parts)


def test_a_key_of_other_than_four_parts_is_not_a_resource_key() -> None:
    with pytest.raises(ValueError, match="not a resource key"):
        resource_key_parts(b"a/b/c")
