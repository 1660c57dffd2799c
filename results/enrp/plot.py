#!/usr/bin/env python3
"""SVG figures of the table sync and takeover rounds (results/enrp/raw/*.jsonl), standard library only.

    python3 results/enrp/plot.py [RAW_DIR]      writes RAW_DIR/sync.svg and RAW_DIR/takeover.svg
"""
import json
import sys
from pathlib import Path

raw = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "raw")


def rows(name):
    p = raw / name
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.exists() else []


def bars(path, title, groups, target, unit="ms"):
    """groups: [(label, [(series, value)])]; one bar per value, a dashed line at the target."""
    w, h, left, top, bottom = 900, 420, 80, 40, 90
    vmax = max([target] + [v for _, vs in groups for _, v in vs]) * 1.1
    n = sum(len(vs) for _, vs in groups) + len(groups)
    bw = (w - left - 20) / max(n, 1)
    y = lambda v: top + (h - top - bottom) * (1 - v / vmax)
    colors = {"wall": "#4477aa", "cpu A": "#ee6677", "cpu B": "#228833", "moved": "#4477aa", "last poll sent": "#ccbb44",
              "keep-alives done": "#aa3377"}
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{w / 2}" y="20" text-anchor="middle" font-size="15">{title}</text>']
    for k in range(6):
        v = vmax * k / 5
        out.append(f'<line x1="{left}" x2="{w - 20}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.0f}</text>')
    out.append(f'<text x="18" y="{h / 2}" transform="rotate(-90 18 {h / 2})" text-anchor="middle">{unit}</text>')
    out.append(f'<line x1="{left}" x2="{w - 20}" y1="{y(target):.1f}" y2="{y(target):.1f}" stroke="red" '
               f'stroke-dasharray="6 4"/><text x="{w - 22}" y="{y(target) - 4:.1f}" text-anchor="end" fill="red">'
               f'target {target:g} {unit}</text>')
    x = left + bw / 2
    seen = {}
    for label, vs in groups:
        x0 = x
        for series, v in vs:
            c = colors.get(series, "#666")
            seen[series] = c
            out.append(f'<rect x="{x:.1f}" y="{y(v):.1f}" width="{bw * 0.9:.1f}" height="{y(0) - y(v):.1f}" fill="{c}"/>')
            x += bw
        out.append(f'<text x="{(x0 + x) / 2 - bw / 2:.1f}" y="{h - bottom + 16}" text-anchor="middle">{label}</text>')
        x += bw
    for i, (series, c) in enumerate(seen.items()):
        out.append(f'<rect x="{left + i * 160}" y="{h - 30}" width="12" height="12" fill="{c}"/>'
                   f'<text x="{left + i * 160 + 16}" y="{h - 20}">{series}</text>')
    out.append("</svg>")
    path.write_text("\n".join(out) + "\n")
    print(f"wrote {path}")


sync = []
for n in (100000, 1000000):
    for i, d in enumerate(rows(f"sync-{n}.jsonl")):
        sync.append((f"{n // 1000}k r{i + 1}", [("wall", d["transfer_ms"]), ("cpu A", d["cpu_a_ms"]), ("cpu B", d["cpu_b_ms"])]))
if sync:
    bars(raw / "sync.svg", "handle table sync to a new peer (A and B on one core; 2 shared vCPUs, load 10-11)", sync, 1000)
tk = []
for i, d in enumerate(rows("takeover.jsonl")):
    tk.append((f"round {i + 1}", [("moved", d["detection_to_moved_everywhere_ms"]),
                                  ("last poll sent", d["detection_to_last_poll_sent_ms"]),
                                  ("keep-alives done", d["keepalive_last_ms"] - d["winner_started_ms"])]))
if tk:
    bars(raw / "takeover.svg", "takeover of 100,000 PEs, from detection (2 shared vCPUs, load 10-11)", tk, 200)
