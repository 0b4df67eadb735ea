"""Run as ``python abandoned_step_exit.py RANK WORLD_SIZE INIT_FILE``: one rank of a 2-rank gloo group. Rank 1
never joins the step (it sleeps); rank 0's dispatch times out, it prints ``RAISED <seconds>`` and returns from
main, leaving the gloo collective abandoned. The test measures how long rank 0's process then takes to exit."""

from __future__ import annotations

import sys
import time

import torch
import torch.distributed as dist

from moecomm import MoECommConfig, make_dispatcher
from moecomm.comm import CommStepError


def main() -> None:
    rank, world_size, init_file = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    dispatcher = make_dispatcher(MoECommConfig(transport="torch", timeout_s=2.0), 4, dist.group.WORLD)
    if rank == 1:
        time.sleep(120)  # alive but never joins the step
        return
    start = time.monotonic()
    try:
        dispatcher.dispatch(torch.randn(4, 8), torch.tensor([[0], [1], [2], [3]]), torch.ones(4, 1))
    except CommStepError as error:
        print(f"RAISED {time.monotonic() - start:.3f} {error}", flush=True)


if __name__ == "__main__":
    main()
