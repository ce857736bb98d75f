"""How tensors travel: the only room that touches `torch.distributed`. `placement` says, as pure
functions, which rank hosts which client, the client groups and their leaders, and each rank's
device and backends; `runtime` starts the process group in that layout and `collectives` move `Message`s
(`message`: named tensors packed by name) in buckets, returning the bytes moved and delivering on
this rank's device; `codecs` compress what travels; `transport` is the round's send-up / send-down
over them. May import `fl.errors` and torch; never strategies, tasks or models. The collectives
are re-exported here (`from fl import comm; comm.broadcast(rt, msg)`).
"""

from fl.comm.collectives import (
    all_ok,
    barrier,
    broadcast,
    broadcast_bytes,
    broadcast_object,
    data_parallel,
    gather_bytes,
    gather_messages,
    gather_object,
    group_sum,
    is_comm_failure,
    reduce_sum,
)
from fl.comm.runtime import Runtime, init, launched_by_torchrun, leave_together, shutdown

__all__ = [
    "Runtime",
    "all_ok",
    "barrier",
    "broadcast",
    "broadcast_bytes",
    "broadcast_object",
    "data_parallel",
    "gather_bytes",
    "gather_messages",
    "gather_object",
    "group_sum",
    "init",
    "is_comm_failure",
    "launched_by_torchrun",
    "leave_together",
    "reduce_sum",
    "shutdown",
]
