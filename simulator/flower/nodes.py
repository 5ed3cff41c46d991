"""Which partitions a node plays: one client per node, or a contiguous group of them.

A node is told its place by Flower's node config (``partition-id`` = its index g, ``num-partitions`` = the
number of nodes M); with N clients in the scenario, node g plays the partitions
``[⌊gN/M⌋, ⌊(g+1)N/M⌋)``, so M = N is one client per node and M < N groups clients so that one Flower
message (one Ray actor call, one SuperNode round trip) trains several clients at once. Server and nodes
compute the same split from (N, M, g); nothing else is exchanged.

>>> node_partitions(10, 3, 0), node_partitions(10, 3, 2)
(range(0, 3), range(6, 10))
>>> NodeMap({7: 0, 9: 1, 8: 2}, num_clients=10).group([0, 9, 4, 2])
{7: [0, 2], 8: [9], 9: [4]}
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

__all__ = ["NodeMap", "node_partitions"]


def node_partitions(num_clients: int, num_nodes: int, index: int) -> range:
    """The partitions node ``index`` of ``num_nodes`` plays among ``num_clients``."""
    if not 0 < num_nodes <= num_clients or not 0 <= index < num_nodes:
        raise ValueError(f"node {index} of {num_nodes} cannot hold a share of {num_clients} clients")
    return range(index * num_clients // num_nodes, (index + 1) * num_clients // num_nodes)


@dataclass(frozen=True)
class NodeMap:
    """The server's map from Flower node ids to node indices (learnt by query), and partitions to nodes."""

    index_of: dict[int, int]  # node id -> node index g
    num_clients: int
    _starts: list[int] = field(init=False, repr=False)
    _node_at: list[int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        m = len(self.index_of)
        by_index = {g: n for n, g in self.index_of.items()}
        object.__setattr__(self, "_starts", [g * self.num_clients // m for g in range(m)] if m else [])
        object.__setattr__(self, "_node_at", [by_index[g] for g in range(m)] if m else [])

    @classmethod
    def empty(cls) -> NodeMap:
        return cls({}, num_clients=0)

    @property
    def num_nodes(self) -> int:
        return len(self.index_of)

    def node_of(self, pid: int) -> int:
        """The node id that plays partition ``pid``."""
        return self._node_at[bisect.bisect_right(self._starts, pid) - 1]

    def partitions_of(self, node_id: int) -> range:
        return node_partitions(self.num_clients, self.num_nodes, self.index_of[node_id])

    def group(self, pids: list[int] | tuple[int, ...]) -> dict[int, list[int]]:
        """``pids`` grouped by the node that plays them (node ids in first-use order, pids in given order)."""
        out: dict[int, list[int]] = {}
        for p in pids:
            out.setdefault(self.node_of(p), []).append(int(p))
        return out
