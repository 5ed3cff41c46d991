"""A node's reply (issue: speed): per-client payloads stacked into one array when they share a shape, read
back per client without trusting the node."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from simulator.flower.client_app import pack_reply
from simulator.flower.inline import _set_task_identity
from simulator.flower.replies import unpack
from simulator.round import ClientReply


def _reply(content: RecordDict) -> Message:
    _set_task_identity()  # a Message needs the task identity a SuperLink (or the inline engine) sets
    return Message(content=content, dst_node_id=7, message_type="train")


def _client(seed: int, shape: tuple[int, ...] = (5,)) -> ClientReply:
    rng = np.random.default_rng(seed)
    return ClientReply(
        payload={"delta": rng.normal(size=shape).astype(np.float32), "scale": np.float32(seed)},
        metrics={"num-examples": 10 + seed, "train-loss": 0.5 * seed},
    )


def test_stacked_reply_round_trips_every_client_and_failure() -> None:
    asked = [3, 4, 5, 6]
    results = [_client(3), RuntimeError("crashed"), _client(5), _client(6)]
    content = pack_reply(asked, results)
    arrays = content["arrays"]
    assert isinstance(arrays, ArrayRecord)
    assert sorted(arrays) == ["*/delta", "*/scale"]  # one array per name, not one per client
    out = unpack(_reply(content), asked)
    assert [c.partition_id for c in out] == asked
    assert out[1].failed == "RuntimeError: crashed"
    for c, r in zip([out[0], out[2], out[3]], [results[0], results[2], results[3]]):
        assert isinstance(r, ClientReply) and c.arrays is not None and c.metrics is not None
        np.testing.assert_array_equal(c.arrays["delta"], r.payload["delta"])
        assert float(c.arrays["scale"]) == float(r.payload["scale"])
        assert c.metrics == r.metrics


def test_clients_with_different_shapes_travel_one_by_one() -> None:
    asked = [0, 1]
    results = [_client(0), _client(1, shape=(7,))]
    content = pack_reply(asked, results)
    assert sorted(content["arrays"]) == ["*/scale", "0/delta", "1/delta"]  # type: ignore[arg-type]
    out = unpack(_reply(content), asked)
    assert [c.arrays["delta"].shape for c in out] == [(5,), (7,)]  # type: ignore[index]


def test_a_stacked_entry_with_the_wrong_number_of_rows_is_malformed_for_every_client() -> None:
    asked = [0, 1, 2]
    content = RecordDict(
        {
            "arrays": ArrayRecord({"*/delta": Array(np.zeros((2, 4), dtype=np.float32))}),
            "metrics": MetricRecord({"*/num-examples": [1, 2, 3]}),
            "clients": ConfigRecord({"partitions": asked}),
        }
    )
    out = unpack(_reply(content), asked)
    assert all(c.malformed and "2 rows for 3 answering clients" in c.malformed for c in out)
    scalar = RecordDict(
        {
            "arrays": ArrayRecord({"*/delta": Array(np.zeros((), dtype=np.float32))}),
            "metrics": MetricRecord({"*/num-examples": 3}),
            "clients": ConfigRecord({"partitions": asked}),
        }
    )
    assert all(c.malformed for c in unpack(_reply(scalar), asked))
