"""Benchmark records: JSON (one record per measurement) and markdown tables."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from moecomm.bench.timing import Timing

INTERLEAVE_NOTE = (
    "Peers of one table were measured in the same run, interleaved (one call of each peer per round), "
    "so their ratios share the same machine noise; times are medians with p10/p90 over the timed rounds."
)


def machine_info() -> dict[str, Any]:
    """Where the numbers come from: CPU, cores, torch and its thread setting, Python, moecomm."""
    import moecomm

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "moecomm": moecomm.__version__,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def timing_record(
    section: str,
    name: str,
    timing: Timing,
    *,
    config: Mapping[str, Any],
    bytes_moved: int | None = None,
    ratios: Mapping[str, float] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One JSON record for one measured case.

    Args:
        section: ``kernels``, ``dispatch``, ``drop`` ...
        name: the case (``permute/native``, ``alltoallv`` ...).
        timing: its samples.
        config: the shapes and settings it ran with.
        bytes_moved: bytes read + written by the case; gives ``gb_per_s`` from the median.
        ratios: peer ratios (name -> value), measured in the same interleaved run.
        extra: further fields (loads, errors ...).
    """
    record: dict[str, Any] = {
        "section": section,
        "name": name,
        "config": dict(config),
        "median_s": timing.median,
        "p10_s": timing.p10,
        "p90_s": timing.p90,
        "min_s": min(timing.samples),
        "repeats": len(timing.samples),
        "samples_s": list(timing.samples),
    }
    if bytes_moved is not None:
        record["bytes_moved"] = int(bytes_moved)
        record["gb_per_s"] = bytes_moved / timing.median / 1e9 if timing.median > 0 else None
    record["ratios"] = dict(ratios or {})
    if extra:
        record.update(extra)
    return record


def write_json(path: Path, sections: Mapping[str, Any], command: str) -> Path:
    """Writes ``{"command", "machine", "note", "sections"}`` to ``path`` (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"command": command, "machine": machine_info(), "note": INTERLEAVE_NOTE, "sections": dict(sections)}
    path.write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; floats are printed with 3 significant digits."""

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.3g}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def ms(seconds: float | None) -> float | None:
    """Seconds -> milliseconds (None stays None)."""
    return None if seconds is None else seconds * 1e3
