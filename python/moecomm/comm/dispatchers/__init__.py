"""Wire patterns (what is exchanged): one of the three plug-in axes.

| dispatcher | wire pattern | host sync on sizes |
|---|---|---|
| ``alltoallv`` | count all-gather, variable-split all-to-all, one row per (kept token, destination rank) | yes (split sizes) |
| ``alltoallv-pairs`` | count all-gather, variable-split all-to-all, one row per kept (token, expert) pair | yes (split sizes) |
| ``alltoall`` | count all-gather, fixed-capacity padded all-to-all | no |
| ``allgather`` | all-gather tokens/ids/weights, reduce-scatter outputs | no (pads to the largest T) |
"""

from moecomm.comm.dispatchers.allgather import AllgatherDispatcher, AllgatherHandle
from moecomm.comm.dispatchers.alltoall import AlltoallDispatcher, AlltoallHandle
from moecomm.comm.dispatchers.alltoallv import AlltoallvDispatcher, AlltoallvHandle
from moecomm.comm.dispatchers.alltoallv_pairs import AlltoallvPairsDispatcher, AlltoallvPairsHandle
from moecomm.comm.dispatchers.base import Dispatcher

__all__ = [
    "Dispatcher",
    "AlltoallvDispatcher",
    "AlltoallvPairsDispatcher",
    "AlltoallvPairsHandle",
    "AlltoallDispatcher",
    "AllgatherDispatcher",
    "AlltoallvHandle",
    "AlltoallHandle",
    "AllgatherHandle",
]
