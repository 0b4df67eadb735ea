"""Dispatchers on CUDA tensors over an NCCL group (torch transport, torch kernel backend).

Skipped without CUDA. Runs as is on a machine with one GPU (1 rank) or more (1 and 2 ranks); every rank's output
is compared with the same dense single-process reference the CPU suite uses.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "comm"))
from comm_reference import dense_output  # noqa: E402
from comm_workers import make_batch, run_expert  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

DISPATCHERS = ("alltoallv", "alltoallv-pairs", "alltoall", "allgather")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank(rank: int, world_size: int, port: int, case: dict, results: dict) -> None:
    from moecomm import MoECommConfig, make_dispatcher

    torch.cuda.set_device(rank)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("nccl", rank=rank, world_size=world_size)
    try:
        inputs = make_batch(case, world_size)[rank]
        device = torch.device("cuda", rank)
        x, ids, w = (inputs[k].to(device) for k in ("x", "topk_ids", "topk_weights"))
        out = {}
        for name in DISPATCHERS:
            config = {"dispatcher": name, "transport": "torch", **case.get("config", {})}
            if name == "alltoall":
                config["max_tokens_per_rank"] = max(case["tokens"]) + 1
            dispatcher = make_dispatcher(MoECommConfig.from_dict(config), case["experts"], dist.group.WORLD)
            expert_x, handle = dispatcher.dispatch(x, ids, w)
            assert expert_x.device == device
            y = dispatcher.combine(
                run_expert(expert_x, handle.tokens_per_local_expert, dispatcher.local_experts.start), handle
            )
            out[name] = (y.cpu(), handle.is_kept.cpu())
        results[rank] = out
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world_size", [1, 2])
@pytest.mark.parametrize("config", [{}, {"token_drop_ratio": 0.2}], ids=["dropless", "drop0.2"])
def test_dispatchers_on_cuda_match_dense_reference(world_size: int, config: dict) -> None:
    if torch.cuda.device_count() < world_size:
        pytest.skip(f"needs {world_size} GPUs")
    case = {"tokens": [33, 17][:world_size], "seed": 7, "hidden": 64, "experts": 8, "top_k": 2, "config": config}
    results = mp.Manager().dict()
    mp.spawn(_rank, args=(world_size, _free_port(), case, results), nprocs=world_size, join=True)
    batch = make_batch(case, world_size)
    for rank in range(world_size):
        inputs = batch[rank]
        for name, (y, kept) in results[rank].items():
            reference = dense_output(inputs["x"], inputs["topk_ids"], inputs["topk_weights"], kept, False)
            torch.testing.assert_close(y.double(), reference, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}")
