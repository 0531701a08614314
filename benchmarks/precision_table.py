"""Markdown tables of ``kernels_bench.py`` results in both precisions (issue 16).

For each workload (W1 and its float32 copy W1-f32 side by side) and thread count: symdl's
median, the fastest of NumPy, JAX and PyTorch and its median, the ratio symdl / fastest, and
the peak memory (maxrss of the cell's process) of symdl and of that peer.

Usage::

    python benchmarks/precision_table.py benchmarks/results_issue16_quiet.json [more.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SUFFIX = "-f32"


def _cell(wl: dict, impl: str, k: str) -> dict:
    return (wl.get("results", {}).get(impl) or {}).get(k) or {}


def _fmt_ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def _cpu_ratio(wl: dict, k: str) -> float | None:
    """symdl's CPU time per call over the least of NumPy's, JAX's and PyTorch's (checked
    cells only), at 1 thread: on a busy machine the wall time counts the waits for a core."""
    if k != "1":
        return None
    times = {i: _cell(wl, i, k).get("cpu_ms") for i in ("numpy", "jax", "torch", "symdl")
             if _cell(wl, i, k).get("check") in ("ok", "reference")}
    peers = [t for i, t in times.items() if i != "symdl" and t]
    return times["symdl"] / min(peers) if times.get("symdl") and peers else None


def rows(doc: dict) -> list[str]:
    W = doc["workloads"]
    threads = [str(k) for k in doc["threads"]]
    out = []
    bases = dict.fromkeys(n.removesuffix(SUFFIX) for n, w in W.items()
                          if w.get("kind") == "workload")
    for name in bases:  # a run of one precision has only W1 or only W1-f32
        wl = W.get(name) or W[name + SUFFIX]
        cells = []
        for k in threads:
            for variant in (name, name + SUFFIX):
                v = W.get(variant)
                if v is None:
                    cells.append("-")
                    continue
                ratio = v.get("symdl_ratio", {}).get(k)
                best = v.get("fastest_peer", {}).get(k)
                sym = _cell(v, "symdl", k)
                peer = _cell(v, best["impl"], k) if best else {}
                if "median_ms" not in sym:
                    cells.append("err" if sym else "-")
                    continue
                cpu = _cpu_ratio(v, k)
                text = (f"**{ratio:.2f}**{f' (cpu {cpu:.2f})' if cpu else ''} "
                        f"{_fmt_ms(sym['median_ms'])} / {best['impl']} "
                        f"{_fmt_ms(best['median_ms'])} ms, "
                        f"{sym.get('peak_rss_mb', 0):.0f} / {peer.get('peak_rss_mb', 0):.0f} MB"
                        if ratio is not None and best else f"{_fmt_ms(sym['median_ms'])} ms")
                if sym.get("check") not in ("ok", None):
                    text += " !"
                cells.append(text)
        out.append(f"| {name}: {wl['title']} | " + " | ".join(cells) + " |")
    return out


def main(paths: list[str]) -> None:
    for path in paths:
        doc = json.loads(Path(path).read_text())
        threads = [str(k) for k in doc["threads"]]
        head = " | ".join(f"{p}, {k} thread{'s' if k != '1' else ''}"
                          for k in threads for p in ("f64", "f32"))
        print(f"<!-- {path}: {doc.get('date')}, {doc.get('command')} -->")
        print(f"| workload | {head} |")
        print("|---|" + "---:|" * (2 * len(threads)))
        print("\n".join(rows(doc)))
        print()


if __name__ == "__main__":
    main(sys.argv[1:])
