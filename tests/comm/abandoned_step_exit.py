"""Run as ``python abandoned_step_exit.py RANK WORLD_SIZE INIT_FILE [MODE]``: one rank of a 2-rank gloo group.
Rank 1 never joins the step (it sleeps); rank 0's step times out, it prints ``RAISED <seconds> <error>`` and
returns from main, leaving the gloo collective abandoned. The test measures how long rank 0's process then takes
to exit.

MODE ``dispatcher`` (default) times out a dispatch; MODE ``transport`` times out the torch transport's
``all_to_all`` into a caller's ``out`` buffer and also prints ``USE_COUNTS <send> <out>``: the C++ use counts
of the caller's two tensors right after the step raised (1 each when gloo's worker has let go of them).
"""

from __future__ import annotations

import sys
import time

import torch
import torch.distributed as dist

from moecomm import MoECommConfig, make_dispatcher
from moecomm.comm import CommStepError
from moecomm.comm.transports.torch_dist import TorchTransport


def main() -> None:
    rank, world_size, init_file = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    mode = sys.argv[4] if len(sys.argv) > 4 else "dispatcher"
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    if mode == "dispatcher":
        dispatcher = make_dispatcher(MoECommConfig(transport="torch", timeout_s=2.0), 4, dist.group.WORLD)
    else:
        transport = TorchTransport(dist.group.WORLD, 2.0, "abandoned")
    if rank == 1:
        time.sleep(120)  # alive but never joins the step
        return
    start = time.monotonic()
    try:
        if mode == "dispatcher":
            dispatcher.dispatch(torch.randn(4, 8), torch.tensor([[0], [1], [2], [3]]), torch.ones(4, 1))
        else:
            send, out = torch.randn(1024, 256), torch.empty(1024, 256)
            transport.all_to_all("dispatch", "rows", send, 1024, out=out)
    except CommStepError as error:
        print(f"RAISED {time.monotonic() - start:.3f} {error}", flush=True)
        if mode == "transport":
            print(f"USE_COUNTS {send._use_count()} {out._use_count()}", flush=True)


if __name__ == "__main__":
    main()
