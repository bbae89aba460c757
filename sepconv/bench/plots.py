"""The two report plots, drawn with matplotlib's object API on the Agg canvas (no pyplot, no
global backend switch)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from .report import latency_frontier, sepconv_points

STYLE = {  # system → (marker, colour)
    "sepconv": ("o", "tab:red"),
    "torch": ("s", "tab:blue"),
    "torch.compile": ("^", "tab:purple"),
    "onnxruntime": ("D", "tab:green"),
    "openvino": ("P", "tab:cyan"),
    "executorch": ("X", "tab:olive"),
    "sepconv-fp32": ("o", "tab:orange"),  # beside --precision int8 (then "sepconv" is int8)
    "onnxruntime-int8": ("d", "darkgreen"),
    "openvino-int8": ("p", "darkcyan"),
}
_OTHER = ["v", "P", "X", "*", "h"]


def _style(system: str, i: int) -> tuple[str, str]:
    return STYLE.get(system, (_OTHER[i % len(_OTHER)], f"C{(i + 4) % 10}"))


def _subtitle(report) -> str:
    s = report.settings
    return (
        f"{s.get('target_spec', {}).get('triple', s['target'])} on {s['device']}, batch "
        f"{s['batch']}, {s['threads']} threads, {report.machine['cpu']}"
    )


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def latency_vs_macs(report, path: Path) -> Path:
    """Latency (median, p10–p90 bars) against MACs on a log axis, one marker per system per
    model; sepconv's latency frontier drawn and its models annotated."""
    fig = Figure(figsize=(9, 6), layout="constrained")
    ax = fig.add_subplot()
    timed = [(m, name) for m in report.models for name in m.systems if m.median(name) and m.macs]
    if not timed:
        _empty(ax, "no system was timed")
    for i, system in enumerate(report.systems):
        pts = [m for m, name in timed if name == system]
        if not pts:
            continue
        marker, colour = _style(system, i)
        xs = [m.macs for m in pts]
        ys = [m.median(system) for m in pts]
        lo = [m.median(system) - m.systems[system].latency_ms["p10"] for m in pts]
        hi = [m.systems[system].latency_ms["p90"] - m.median(system) for m in pts]
        ax.errorbar(
            xs, ys, yerr=[lo, hi], fmt=marker, color=colour, label=system, capsize=3,
            markersize=8 if system == "sepconv" else 6, alpha=0.9,
        )  # fmt: skip
    points = sepconv_points(report)
    front = latency_frontier(points)
    if front:
        by_name = {n: (x, y) for n, x, y in points}
        fx, fy = zip(*sorted(by_name[n] for n in front))
        ax.step(fx, fy, where="pre", color="tab:red", linestyle="--", linewidth=1, alpha=0.6)
        ax.scatter(
            fx, fy, s=260, facecolors="none", edgecolors="tab:red", linewidths=1.5,
            label="sepconv latency frontier",
        )  # fmt: skip
    annotated = set()
    for m, name in timed:  # name each model once, at sepconv's point if it has one
        if m.name in annotated or (name != "sepconv" and m.median("sepconv")):
            continue
        annotated.add(m.name)
        tag = m.name + (" ★" if m.name in front else "")
        ax.annotate(tag, (m.macs, m.median(name)), textcoords="offset points", xytext=(7, 5),
                    fontsize=8)  # fmt: skip
    if timed:
        ax.set_xscale("log")
        ys = [m.median(name) for m, name in timed]
        if max(ys) / min(ys) > 10:
            ax.set_yscale("log")
        ax.set_xlabel("MACs per forward pass (log scale)")
        ax.set_ylabel("latency, ms (median; bars p10–p90)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="upper left", fontsize=9)
    ax.set_title(f"Latency vs MACs — ★ on the frontier\n{_subtitle(report)}", fontsize=10)
    fig.savefig(path, dpi=120)
    return path


def speedup(report, path: Path) -> Path:
    """sepconv's speedup over each peer (peer ms / sepconv ms) per model, grouped bars."""
    rows = [(m.name, m.speedup()) for m in report.models if m.speedup()]
    peers = [p for p in report.systems if p != "sepconv" and any(p in s for _, s in rows)]
    fig = Figure(figsize=(max(6.0, 1.4 * len(rows) + 3), 5), layout="constrained")
    ax = fig.add_subplot()
    if not rows:
        _empty(ax, "no peer was timed next to sepconv")
    else:
        width = 0.8 / max(len(peers), 1)
        for j, peer in enumerate(peers):
            xs = [i + (j - (len(peers) - 1) / 2) * width for i in range(len(rows))]
            vals = [s.get(peer, 0.0) for _, s in rows]
            bars = ax.bar(  # from the 1× line: up where sepconv is faster, down where slower
                xs, [v - 1 if v else 0.0 for v in vals], width, bottom=1.0, label=f"vs {peer}",
                color=_style(peer, j)[1],
            )  # fmt: skip
            ax.bar_label(bars, [f"{v:.2f}×" if v else "n/a" for v in vals], fontsize=8)
        ax.axhline(1.0, color="black", linewidth=1)
        shown = [v for _, sp in rows for v in sp.values()]
        if max(shown) / min(shown) > 5:
            ax.set_yscale("log")
        ax.set_xticks(range(len(rows)), [n for n, _ in rows], rotation=20, ha="right")
        ax.set_ylabel("speedup of sepconv (peer ms / sepconv ms; >1 faster)")
        ax.legend(fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
    ax.set_title(f"sepconv speedup over each peer\n{_subtitle(report)}", fontsize=10)
    fig.savefig(path, dpi=120)
    return path
