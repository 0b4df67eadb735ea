"""PNG plots of benchmark results (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: Path) -> Path:
    """Writes ``fig`` as a PNG to ``path`` and frees it."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path


def line_plot(series: dict[str, list[tuple[float, float]]], x_label: str, y_label: str, **legend: Any) -> Any:
    """A figure with one line per ``series`` entry (label -> [(x, y)], sorted by x)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, points in series.items():
        points = sorted(points)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.grid(alpha=0.3)
    ax.legend(**legend)
    return fig, ax


def plot_kernels(result: dict[str, Any], path: Path) -> Path:
    """Bar chart: GB/s of each kernel case, memcpy bars included (one figure)."""
    plt = pyplot()
    records = [r for r in result["records"] if r.get("gb_per_s")]
    names = [r["name"] for r in records]
    values = [r["gb_per_s"] for r in records]
    colors = ["tab:gray" if n.startswith("memcpy") else "tab:blue" if "/native" in n else "tab:orange" for n in names]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.barh(names, values, color=colors)
    memcpy = next((r["gb_per_s"] for r in records if r["name"] == "memcpy/prealloc"), None)
    if memcpy:
        ax.axvline(memcpy, color="tab:gray", linestyle="--", label=f"memcpy (preallocated) {memcpy:.1f} GB/s")
        ax.legend(loc="lower right")
    ax.invert_yaxis()
    config = result["config"]
    ax.set_xlabel("GB/s (bytes read + written / median time)")
    ax.set_title(
        f"moecomm kernels: T={config['num_tokens']} H={config['hidden']} E={config['num_experts']} "
        f"K={config['top_k']} {config['dtype']} (blue: native)"
    )
    return save(fig, path)


def plot_dispatch(result: dict[str, Any], path: Path) -> Path:
    """Bar chart: dispatch + combine step time per dispatcher, p10-p90 whiskers."""
    plt = pyplot()
    records = result["records"]
    names = [r["name"] for r in records]
    medians = [r["median_s"] * 1e3 for r in records]
    low = [(r["median_s"] - r["p10_s"]) * 1e3 for r in records]
    high = [(r["p90_s"] - r["median_s"]) * 1e3 for r in records]
    fig, ax = plt.subplots(figsize=(max(7, 1.1 * len(names)), 4))
    ax.bar(
        names,
        medians,
        yerr=[low, high],
        capsize=4,
        color=["tab:orange" if r.get("kind") == "peer" else "tab:blue" for r in records],
    )
    config = result["config"]
    ax.set_ylabel("dispatch + combine, ms (slowest rank)")
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    ax.set_title(
        f"{config['num_ranks']} ranks, T={config['num_tokens']}/rank H={config['hidden']} "
        f"E={config['num_experts']} K={config['top_k']} {config['dtype']}"
    )
    return save(fig, path)


def plot_drop(result: dict[str, Any], y_key: str, y_label: str, path: Path, *, scale: float = 1.0) -> Path:
    """Line plot: drop ratio vs ``y_key`` of the drop records, one line per skew."""
    mode = result["config"].get("routing", "zipf")
    series: dict[str, list[tuple[float, float]]] = {}
    for r in result["records"]:
        series.setdefault(f"{mode} {r['skew']:g}", []).append((r["token_drop_ratio"], r[y_key] * scale))
    fig, _ = line_plot(series, "token_drop_ratio", y_label, title="skew")
    return save(fig, path)


def plot_simulation(result: dict[str, Any], path: Path) -> Path:
    """Line plot: predicted step-time cut vs drop ratio, one line per (EP size, skew)."""
    series: dict[str, list[tuple[float, float]]] = {}
    for r in result["records"]:
        series.setdefault(f"EP{r['ep_size']} zipf {r['skew']:g}", []).append(
            (r["token_drop_ratio"], 100 * r["step_time_cut"])
        )
    fig, ax = line_plot(series, "token_drop_ratio", "predicted MoE step time cut, %", fontsize=7, ncol=2)
    ax.axhspan(10, 15, color="tab:green", alpha=0.15, label="published: 10-15% (EP16, ~0.1)")
    ax.legend(fontsize=7, ncol=2)
    return save(fig, path)


def write_plots(results: dict[str, dict[str, Any]], out: Path) -> list[Path]:
    """Writes the PNGs of every section in ``results`` under ``out``; returns their paths."""
    paths = []
    if "kernels" in results:
        paths.append(plot_kernels(results["kernels"], out / "kernels_gbps.png"))
    if "dispatch" in results:
        paths.append(plot_dispatch(results["dispatch"], out / "dispatch_time.png"))
    if "drop" in results:
        paths.append(
            plot_drop(
                results["drop"], "median_s", "step time, ms (slowest rank)", out / "drop_step_time.png", scale=1e3
            )
        )
        paths.append(
            plot_drop(
                results["drop"], "relative_error", "relative output error vs dropless", out / "drop_output_error.png"
            )
        )
    if "simulate" in results:
        paths.append(plot_simulation(results["simulate"], out / "simulate_ep.png"))
    return paths
