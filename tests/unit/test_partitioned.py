"""The co-partitioned assignment: partition n of every input topic to one member, owners shared."""

from __future__ import annotations

from aiokafka.coordinator.protocol import ConsumerProtocolMemberMetadata

from services.common.partitioned import CopartitionedAssignor


class Cluster:
    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        n = self.counts.get(topic)
        return None if n is None else set(range(n))


TOPICS = ["p.events", "p.send-requests"]


def members(*urls: str) -> dict[str, ConsumerProtocolMemberMetadata]:
    return {
        f"member-{i}-{url[-4:]}": CopartitionedAssignor(url).metadata(TOPICS)
        for i, url in enumerate(urls)
    }


def test_each_partition_number_goes_to_one_member_in_every_topic() -> None:
    joined = members("http://w2:8081", "http://w1:8081", "http://w3:8081")
    result = CopartitionedAssignor("http://w1:8081").assign(Cluster({t: 8 for t in TOPICS}), joined)
    owned: dict[int, set[str]] = {}
    for member, assignment in result.items():
        by_topic = dict(assignment.assignment)
        assert set(by_topic) == set(TOPICS)
        assert by_topic["p.events"] == by_topic["p.send-requests"]
        for n in by_topic["p.events"]:
            owned.setdefault(n, set()).add(member)
    assert sorted(owned) == list(range(8))
    assert all(len(owners) == 1 for owners in owned.values())
    sizes = sorted(len(dict(a.assignment)["p.events"]) for a in result.values())
    assert sizes == [2, 3, 3]


def test_every_member_learns_who_owns_what_and_the_order_survives_new_member_ids() -> None:
    first = members("http://w1:8081", "http://w2:8081")
    cluster = Cluster({t: 4 for t in TOPICS})
    result = CopartitionedAssignor("x").assign(cluster, first)
    listener = CopartitionedAssignor("http://w1:8081")
    listener.on_assignment(next(iter(result.values())))
    assert listener.owners == {
        0: "http://w1:8081",
        1: "http://w2:8081",
        2: "http://w1:8081",
        3: "http://w2:8081",
    }
    # Restarted workers come back with new member ids: the same URLs get the same partitions.
    again = {f"new-{k}": v for k, v in reversed(list(first.items()))}
    listener.on_assignment(next(iter(CopartitionedAssignor("x").assign(cluster, again).values())))
    assert listener.owners[0] == "http://w1:8081"


def test_a_garbled_owner_map_is_no_map() -> None:
    from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

    listener = CopartitionedAssignor("u")
    listener.on_assignment(ConsumerProtocolMemberAssignment(0, [], b"not json"))
    assert listener.owners == {}
