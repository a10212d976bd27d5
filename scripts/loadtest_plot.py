"""``--plot FILE.png``: latency percentiles and throughput over the run (matplotlib, Agg)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from scripts.loadtest_stats import Bucket


def plot_timeline(rows: Sequence[Bucket], path: Path, *, title: str = "chat load test") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r.start + r.width / 2 for r in rows]
    fig, (lat, thr) = plt.subplots(2, 1, figsize=(8, 5.5), sharex=True)
    for attr, label, style in (("ttft_p50_ms", "p50", "-"), ("ttft_p95_ms", "p95", "--"),
                               ("ttft_p99_ms", "p99", ":")):
        lat.plot(t, [getattr(r, attr) for r in rows], style, label=label)
    lat.set_ylabel("time to first delta (ms)")
    lat.set_ylim(bottom=0)
    lat.legend(loc="upper left", fontsize="small")
    lat.grid(alpha=0.3)
    lat.set_title(title, fontsize="medium")
    thr.plot(t, [r.deltas_per_s for r in rows], color="tab:green", label="deltas/s")
    thr.set_ylabel("deltas/s", color="tab:green")
    thr.set_ylim(bottom=0)
    msgs = thr.twinx()
    msgs.plot(t, [r.messages_per_s for r in rows], color="tab:purple", label="answers/s")
    msgs.set_ylabel("answers/s", color="tab:purple")
    msgs.set_ylim(bottom=0)
    thr.set_xlabel("time since start (s)")
    thr.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)
