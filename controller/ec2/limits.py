"""EC2's limits: tags per resource, quotas of instances and key pairs, nodes' capacity.

Pure: counts in, a decision or an EC2 error out (issue 16, item 10). The store reads and the
writes stay in ``instances.py``; the numbers come from the controller's configuration.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from controller.ec2.network import DEFAULT_SUBNET
from controller.errors import (
    InstanceLimitExceeded,
    InsufficientInstanceCapacity,
    KeyPairLimitExceeded,
    TagLimitExceeded,
)
from controller.store.records import Node

#: EC2's limit of tags per resource (user tags; RoleCall makes no ``aws:`` tags).
MAX_TAGS_PER_RESOURCE = 50


@dataclass(frozen=True)
class Ec2Limits:
    """The operator's numbers (``ec2.*`` in the configuration), and the default subnet."""

    #: Instances not terminated an account may have.
    max_instances_per_account: int = 1000
    #: Instances not terminated a node may run when it was enrolled without its own capacity.
    node_capacity: int = 1000
    #: Where instances' addresses come from unless their node has its own subnet.
    subnet: str = DEFAULT_SUBNET
    #: Key pairs an account may hold (EC2's quota: 5,000 per region).
    max_key_pairs_per_account: int = 5000


def check_tag_count(count: int, resource: str = "instance") -> None:
    """More than 50 tags for one resource is TagLimitExceeded, as EC2 answers."""
    if count > MAX_TAGS_PER_RESOURCE:
        raise TagLimitExceeded(
            f"The maximum number of tags per resource is {MAX_TAGS_PER_RESOURCE};"
            f" the request gives each {resource} {count}."
        )


def check_key_pair_count(held: int, limit: int) -> None:
    """One more key pair for an account holding ``held`` must stay within ``limit``."""
    if held >= limit:
        raise KeyPairLimitExceeded(
            f"You have reached the limit of {limit} key pairs for this account. Delete key"
            " pairs you no longer use, or ask the operator to raise"
            " ec2.max_key_pairs_per_account."
        )


def instances_allowed(running: int, min_count: int, max_count: int, limit: int) -> int:
    """How many to launch within the account's quota: up to ``max_count``, at least ``min_count``.

    As EC2, a request is refused only when not even ``min_count`` fit; then the error names the
    total the account would have had.
    """
    room = max(0, limit - running)
    if room < min_count:
        raise InstanceLimitExceeded(
            f"You have requested more instances ({running + min_count}) than your current"
            f" instance limit of {limit} allows for the specified instance type. Ask the"
            " operator to raise ec2.max_instances_per_account."
        )
    return min(max_count, room)


def place(
    nodes: Sequence[Node],
    counts: Mapping[str, int],
    default_capacity: int,
    min_count: int,
    max_count: int,
) -> list[str]:
    """A node for each of up to ``max_count`` instances, each on the least loaded node with room.

    ``nodes`` are the candidates (enrolled, not retired); ``counts`` their instances not
    terminated. Fewer than ``min_count`` places is InsufficientInstanceCapacity; otherwise as
    many as fit, up to ``max_count``, as EC2 launches "the largest possible number of instances
    above the specified minimum count".
    """
    loads = [
        (counts.get(node.name, 0), node.name, _capacity(node, default_capacity)) for node in nodes
    ]
    heap = [load for load in loads if load[0] < load[2]]
    room = sum(capacity - count for count, _, capacity in heap)
    if room < min_count:
        hint = "" if nodes else " No node is enrolled; enroll one with enroll-node NAME."
        raise InsufficientInstanceCapacity(
            "We currently do not have sufficient capacity to launch the instances:"
            f" {room} more fit on the nodes that may take them, the request needs at least"
            f" {min_count}.{hint}"
        )
    heapq.heapify(heap)
    chosen: list[str] = []
    while heap and len(chosen) < max_count:
        count, name, capacity = heapq.heappop(heap)
        chosen.append(name)
        if count + 1 < capacity:
            heapq.heappush(heap, (count + 1, name, capacity))
    return chosen


def _capacity(node: Node, default_capacity: int) -> int:
    return node.capacity if node.capacity is not None else default_capacity
