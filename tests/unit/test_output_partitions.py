"""The output producer builds its batches per partition itself: a key must land where
aiokafka's (and Kafka's) default partitioner puts it, or a subject's events sent by the
worker and by ``optout events republish`` could end up on different partitions."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given
from hypothesis import strategies as st

from service.adapters.kafka.producer import murmur2, partition_for


@given(key=st.binary(min_size=0, max_size=80), count=st.integers(min_value=1, max_value=64))
def test_a_key_goes_where_the_default_partitioner_puts_it(key: bytes, count: int) -> None:
    partitions = list(range(count))
    assert partition_for(key, partitions) == DefaultPartitioner()(key, partitions, partitions)


@given(count=st.integers(min_value=1, max_value=64))
def test_a_record_without_key_goes_to_one_of_the_partitions(count: int) -> None:
    assert partition_for(None, list(range(count))) in range(count)


@given(data=st.binary(min_size=0, max_size=200))
def test_murmur2_is_kafkas(data: bytes) -> None:
    assert murmur2(data) == aiokafka_murmur2(data)
