"""The bench report: results per model and system, and on disk JSON with everything, a Markdown
table and the two plots."""

from __future__ import annotations

import json
import logging
import os
import platform
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np

from sepconv.timing import rounds_ratio

log = logging.getLogger(__name__)

SCHEMA = "sepconv-bench/1"


@dataclass
class SystemResult:
    status: str  # "ok" | "FAIL" | "unavailable"
    reason: str | None = None
    # passed, rule; fp32: max_abs_error, max_rel_error, tolerance; int8: sqnr_db, cosine (vs fp32
    # eager), min_sqnr_db, and "own" (sepconv int8: sepconv validate's figures)
    validation: dict | None = None
    # median, p10, p90, runs, timer, rounds, round_medians — only when status is "ok"
    latency_ms: dict | None = None
    info: dict = field(default_factory=dict)
    precision: str = "fp32"  # "fp32" | "int8"
    fp32_twin: str | None = None  # int8: the fp32 system it quantizes (int8 gain = its ms / ours)


@dataclass
class ModelResult:
    name: str
    family: str | None = None
    input_shape: list[int] | None = None
    params: int | None = None
    macs: int | None = None  # one forward of input_shape (batch included)
    macs_per_image: int | None = None
    systems: dict[str, SystemResult] = field(default_factory=dict)
    error: str | None = None  # the model itself could not be built
    calibration: dict | None = None  # int8: the samples all int8 systems were calibrated on

    def median(self, system: str) -> float | None:
        r = self.systems.get(system)
        return r.latency_ms["median"] if r is not None and r.latency_ms else None

    def ratio(self, num: str, den: str) -> float | None:
        """``num``'s time over ``den``'s: paired by round where both were timed in the same
        interleaved rounds (:func:`sepconv.timing.paired_ratio`), else the medians' ratio."""
        a, b = self.median(num), self.median(den)
        if not a or not b:
            return None
        ra, rb = (self.systems[n].latency_ms.get("round_medians") or () for n in (num, den))
        paired = rounds_ratio(ra, rb)
        return a / b if paired is None else paired

    def speedup(self) -> dict[str, float]:
        """sepconv's speedup over each timed peer: peer time / sepconv time (:meth:`ratio`)."""
        if not self.median("sepconv"):
            return {}
        ratios = {name: self.ratio(name, "sepconv") for name in self.systems if name != "sepconv"}
        return {name: r for name, r in ratios.items() if r is not None}

    def int8_speedup(self) -> dict[str, float]:
        """Each timed int8 system's gain over the fp32 system it quantizes (twin / its time)."""
        ratios = {
            name: self.ratio(r.fp32_twin, name) for name, r in self.systems.items() if r.fp32_twin
        }
        return {name: r for name, r in ratios.items() if r is not None}


@dataclass
class BenchReport:
    settings: dict
    machine: dict
    versions: dict
    models: list[ModelResult]
    created: str = ""
    schema: str = SCHEMA

    @property
    def systems(self) -> list[str]:
        seen: dict[str, None] = {}
        for m in self.models:
            seen.update(dict.fromkeys(m.systems))
        return list(seen)

    @property
    def failed(self) -> bool:
        """Any system that failed validation or the run, or a model that could not be built."""
        return any(
            m.error or any(r.status == "FAIL" for r in m.systems.values()) for m in self.models
        )

    def to_json(self) -> dict:
        d = asdict(self)
        for m, md in zip(self.models, d["models"]):
            md["speedup"] = m.speedup()
            md["int8_speedup"] = m.int8_speedup()
        return _finite(d)

    def markdown(self) -> str:
        return markdown(self)

    def write(self, out_dir: str | os.PathLike, stem: str = "report") -> dict[str, Path]:
        """Write ``{stem}.json``, ``{stem}.md`` and the two plots into ``out_dir``."""
        return write_report(self, Path(out_dir), stem)


def _finite(obj):
    """JSON has no Infinity/NaN: non-finite floats become None."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


_DISTRIBUTIONS = {
    "sepconv": "sepconv",
    "tvm": "apache-tvm",
    "tvm_ffi": "apache-tvm-ffi",
    "torch": "torch",
    "onnxruntime": "onnxruntime",
    "onnx": "onnx",
    "openvino": "openvino",
    "executorch": "executorch",
    "numpy": "numpy",
}


def versions() -> dict:
    out = {}
    for key, dist in _DISTRIBUTIONS.items():
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[key] = None
    out["python"] = platform.python_version()
    return out


def machine_info() -> dict:
    """The machine the report was made on (the peers run here; sepconv too unless remote)."""
    import psutil

    from sepconv.targets.host import cpu_model_name

    return {
        "cpu": cpu_model_name(),
        "arch": platform.machine(),
        "cores_physical": psutil.cpu_count(logical=False),
        "cores_logical": psutil.cpu_count(logical=True),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
    }


def latency_frontier(points: list[tuple[str, float, float]]) -> list[str]:
    """Names of the (name, macs, latency) points no other point dominates, by latency.

    A model is dominated when another one does at least as much arithmetic (MACs, the usual
    proxy for capacity) in at most the same time, and strictly better in one of them. The
    frontier is where to pick a backbone; a model off it is one that MACs made look cheaper.
    """
    front = []
    for name, macs, ms in points:
        dominated = any(
            m2 >= macs and t2 <= ms and (m2 > macs or t2 < ms) for n2, m2, t2 in points
            if n2 != name
        )  # fmt: skip
        if not dominated:
            front.append((ms, name))
    return [name for _, name in sorted(front)]


def sepconv_points(report) -> list[tuple[str, float, float]]:
    return [
        (m.name, float(m.macs), m.median("sepconv"))
        for m in report.models
        if m.macs and m.median("sepconv")
    ]


def _ms(v: float) -> str:
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:.0f}"


def _count(n: int | None) -> str:
    if n is None:
        return "–"
    return f"{n / 1e9:.2f}G" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


def _rounds(rounds: int) -> str:
    return f", in {rounds} interleaved rounds (order reversed each round)" if rounds > 1 else ""


def _precisions(report) -> dict[str, str]:
    out: dict[str, str] = {}
    for m in report.models:
        for name, r in m.systems.items():
            out.setdefault(name, r.precision)
    return out


def _label(name: str, precision: str) -> str:
    return name if precision == "fp32" or precision in name else f"{name} ({precision})"


def _db(v) -> str:
    return "–" if v is None else "∞" if v == float("inf") else f"{v:.1f}"


def _checked(report, precisions: dict[str, str]) -> str:
    """The sentence saying how every system was validated before it was timed."""
    s = report.settings
    fp32 = "max abs error ≤ 1e-4·max|eager| + 1e-5"
    if "int8" not in precisions.values():
        return f"Every system was checked against eager PyTorch ({fp32}) before it was timed."
    cal = s.get("calibration") or "seeded random inputs"
    return (
        f"Every system was checked against eager PyTorch before it was timed: fp32 systems by "
        f"{fp32}; int8 systems by SQNR ≥ {s.get('min_sqnr_db', 8.0):g} dB against fp32 eager "
        f"(shown after the time), all calibrated on the same samples ({cal}). The zoo's seeded "
        "random weights quantize worse than trained ones: the SQNR compares the quantizers, it "
        "is not the models' int8 accuracy."
    )


def markdown(report) -> str:
    s, mach, v = report.settings, report.machine, report.versions
    systems = report.systems
    precisions = _precisions(report)
    peers = [p for p in systems if any(p in m.speedup() for m in report.models)]
    gains = [
        p for p in systems if p != "sepconv" and any(p in m.int8_speedup() for m in report.models)
    ]
    spec = s.get("target_spec", {})
    lines = [
        "# sepconv bench" + (" (int8)" if s.get("precision") == "int8" else ""),
        "",
        f"Machine: {mach['cpu']}, {mach['cores_physical']} cores / {mach['cores_logical']} "
        f"threads, {mach['memory_gib']} GiB, {mach['os']}.  ",
        f"Target {spec.get('triple', s['target'])} ({spec.get('key', '')}, mcpu "
        f"{spec.get('mcpu', '?')}) on device {s['device']}; batch {s['batch']}, {s['threads']} "
        f"threads, median of {s['runs']} runs after {s['warmup']} warm-up"
        f"{_rounds(s.get('rounds', 1))}.  ",
        "Versions: " + " · ".join(f"{k} {val}" for k, val in v.items() if val) + ".",
        "",
        "Latency in ms: median (p10–p90). " + _checked(report, precisions) + " "
        "Speedup = peer time / sepconv time (>1: sepconv is faster), paired by round: the "
        "median over the interleaved rounds of the two systems' round medians' ratio (with "
        "fewer than 3 rounds, the medians' ratio)"
        + (
            "; `X-int8 vs X`: X's fp32 time / its int8 time, paired the same way (what int8 "
            "buys X)."
            if gains
            else "."
        ),
        "",
    ]
    head = ["model", "input", "params", "MACs"]
    head += [_label(n, precisions[n]) for n in systems] + ["sepconv schedules"]
    twins = {n: r.fp32_twin for m in report.models for n, r in m.systems.items()}
    head += [f"vs {p}" for p in peers] + [f"{p} vs {twins[p]}" for p in gains]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes: dict[str, int] = {}

    def note(text: str) -> str:
        notes.setdefault(text, len(notes) + 1)
        return f"[{notes[text]}]"

    for m in report.models:
        if m.error:
            row = [m.name, "–", "–", "–", *[f"error {note(m.error)}"] * len(systems), "–"]
            lines.append("| " + " | ".join(row + ["–"] * (len(peers) + len(gains))) + " |")
            continue
        res = "×".join(map(str, m.input_shape[2:]))
        row = [f"`{m.name}`", f"{m.input_shape[0]}×{res}", _count(m.params), _count(m.macs)]
        for name in systems:
            r = m.systems.get(name)
            if r is None:
                row.append("–")
            elif r.status == "ok" and r.latency_ms:
                t = r.latency_ms
                cell = f"**{_ms(t['median'])}** ({_ms(t['p10'])}–{_ms(t['p90'])})"
                if r.precision == "int8" and r.validation:
                    cell += f" · {_db(r.validation.get('sqnr_db'))} dB"
                row.append(cell)
            elif r.status == "FAIL":
                row.append(f"FAIL {note(f'{name}: {r.reason}')}")
            else:
                row.append(f"n/a {note(f'{name}: {r.reason}')}")
        ours = m.systems.get("sepconv")
        row.append(ours.info.get("tuned", "–") if ours else "–")
        speed, gain = m.speedup(), m.int8_speedup()
        row += [f"{speed[p]:.2f}×" if p in speed else "–" for p in peers]
        row += [f"{gain[p]:.2f}×" if p in gain else "–" for p in gains]
        lines.append("| " + " | ".join(row) + " |")
    lines += _accuracy_table(report)
    front = latency_frontier(sepconv_points(report))
    if front:
        pts = sepconv_points(report)
        off = [n for n, _, _ in pts if n not in front]
        lines += [
            "",
            "Latency frontier of sepconv's models (no other model does more MACs in less time): "
            + ", ".join(f"`{n}`" for n in front)
            + "."
            + (
                " Off the frontier, where MACs mislead: " + ", ".join(f"`{n}`" for n in off) + "."
                if off
                else ""
            ),
        ]
    if notes:
        lines += ["", "Notes:", ""]
        lines += [f"{i}. {text}" for text, i in notes.items()]
    return "\n".join(lines) + "\n"


def _accuracy_table(report) -> list[str]:
    """int8 systems: SQNR and cosine against fp32 eager on the bench's input; sepconv's own
    ``sepconv validate`` figures against the simulated quantization beside them."""
    rows = []
    for m in report.models:
        for name, r in m.systems.items():
            v = r.validation or {}
            if r.precision != "int8" or "sqnr_db" not in v:
                continue
            own = v.get("own") or {}
            vq = (
                f"{_db(own['sqnr_vs_quantized_db'])} dB (worst input "
                f"{_db(own['worst_sqnr_vs_quantized_db'])}), {own['max_steps']:.2f} steps"
                if own
                else "–"
            )
            cos = "–" if v.get("cosine") is None else f"{v['cosine']:.4f}"
            rows.append(
                f"| `{m.name}` | {name} | {_db(v['sqnr_db'])} | {cos} | {vq} | "
                f"{'ok' if v.get('passed') else 'FAIL'} |"
            )
    if not rows:
        return []
    return [
        "",
        "int8 accuracy against fp32 eager PyTorch (the validation input); sepconv's own check "
        "against its simulated quantization (`sepconv validate`: the whole model's SQNR, median "
        "over its inputs; ok/FAIL by each operator on the reference's inputs):",
        "",
        "| model | system | SQNR dB | cosine | vs simulated quantization | |",
        "|---|---|---|---|---|---|",
        *rows,
    ]


def write_report(report, out_dir: Path, stem: str = "report") -> dict[str, Path]:
    """Write ``{stem}.json``, ``{stem}.md`` and the plots (``latency_vs_macs.png``,
    ``speedup.png``, prefixed ``{stem}_`` unless the stem is ``report``) into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = "" if stem == "report" else f"{stem}_"
    files = {"json": out_dir / f"{stem}.json", "markdown": out_dir / f"{stem}.md"}
    _atomic_write(files["json"], json.dumps(report.to_json(), indent=2) + "\n")
    _atomic_write(files["markdown"], report.markdown())
    try:
        from .plots import latency_vs_macs, speedup
    except ImportError as exc:
        log.warning("no plots: %s (pip install matplotlib)", exc)
        return files
    files["latency_vs_macs"] = latency_vs_macs(report, out_dir / f"{prefix}latency_vs_macs.png")
    files["speedup"] = speedup(report, out_dir / f"{prefix}speedup.png")
    return files


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
