"""`patchflow plot RUN`: the loss curve (and loss by noise level) of a training run as a PNG."""

from __future__ import annotations

import json
from pathlib import Path


def read_log(run: str | Path) -> list[dict]:
    path = Path(run) / "log.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no log.jsonl in {run}: is it a training run folder?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_run(run: str | Path, output: str | Path | None = None) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("patchflow plot needs matplotlib: pip install 'patchflow[plot]'") from e
    records = read_log(run)
    if not records:
        raise ValueError(f"{run}/log.jsonl is empty")
    steps = [r["step"] for r in records]
    by_t = [r for r in records if r.get("loss_by_t")]
    fig, axes = plt.subplots(1, 2 if by_t else 1, figsize=(11 if by_t else 6, 4), squeeze=False)
    ax = axes[0][0]
    ax.plot(steps, [r["loss"] for r in records], lw=1.2)
    ax.set(xlabel="step", ylabel="loss", title=f"{Path(run).name}: training loss", yscale="log")
    ax.grid(alpha=0.3)
    if by_t:
        ax = axes[0][1]
        bins = len(by_t[0]["loss_by_t"])
        for r in by_t[:: max(1, len(by_t) // 5)] + [by_t[-1]]:
            vals = [v if v is not None else float("nan") for v in r["loss_by_t"]]
            ax.plot([(k + 0.5) / bins for k in range(bins)], vals, marker="o", ms=3, label=f"step {r['step']}")
        ax.set(xlabel="noise level t", ylabel="loss", title="loss by timestep bin")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(output) if output else Path(run) / "loss.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
