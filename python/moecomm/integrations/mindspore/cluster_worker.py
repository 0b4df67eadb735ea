"""One process of a :func:`moecomm.integrations.mindspore.launch.run_mindspore_local` cluster.

Run as ``python -m moecomm.integrations.mindspore.cluster_worker RUN_DIR`` with MindSpore's cluster
variables set (``MS_ROLE``, ``MS_SCHED_HOST``, ``MS_SCHED_PORT``, ``MS_WORKER_NUM``, ``MS_NODE_ID``).
The scheduler (``MS_ROLE=MS_SCHED``) only joins the cluster. A worker joins it in PyNative mode on the CPU,
runs ``module:function(rank, world_size, *args)`` from ``RUN_DIR/job.pkl`` and writes
``RUN_DIR/result-<node>.pkl`` (``(True, value)`` or ``(False, traceback)``), renamed into place whole, then
leaves at once with ``os._exit``: after a failed collective MindSpore's own teardown could block.
"""

from __future__ import annotations

import importlib
import os
import pickle
import sys
import traceback
from pathlib import Path


def _write_result(run_dir: Path, node: str, message: tuple[bool, object]) -> None:
    path = run_dir / f"result-{node}.pkl"
    partial = path.with_suffix(".partial")
    with open(partial, "wb") as file:
        try:
            pickle.dump(message, file)
        except Exception:  # noqa: BLE001 - an unpicklable result is reported as this rank's failure
            file.seek(0)
            file.truncate()
            pickle.dump((False, traceback.format_exc()), file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(partial, path)


def main(run_dir: Path) -> None:
    from mindspore.communication import get_group_size, get_rank, init

    import mindspore as ms

    ms.set_context(mode=ms.PYNATIVE_MODE)
    ms.set_device("CPU")
    if os.environ.get("MS_ROLE") == "MS_SCHED":
        init()
        return
    node = os.environ["MS_NODE_ID"]
    try:
        import torch

        torch.set_num_threads(1)
        with open(run_dir / "job.pkl", "rb") as file:
            target, args = pickle.load(file)
        module, _, name = target.partition(":")
        function = getattr(importlib.import_module(module), name)
        init()
        message: tuple[bool, object] = (True, function(get_rank(), get_group_size(), *args))
    except BaseException:  # noqa: BLE001 - report everything, including SystemExit
        message = (False, traceback.format_exc())
    _write_result(run_dir, node, message)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
