#!/usr/bin/env python3
"""Draws a soak CSV (seconds, a_rss_kb, a_fds, b_rss_kb, b_fds) as SVG next to it and prints,
per registrar, the RSS and fd levels at one minute, their extremes afterwards, and whether they
stayed within the bound (RSS +-10 %, fds +-8)."""

import csv
import sys

RSS_BOUND = 0.10
FD_BOUND = 8
SETTLE_S = 60


def main(path):
    rows = [r for r in csv.DictReader(open(path))]
    t = [int(r["seconds"]) for r in rows]
    series = {
        "A RSS (MiB)": [int(r["a_rss_kb"]) / 1024 for r in rows],
        "B RSS (MiB)": [int(r["b_rss_kb"]) / 1024 for r in rows],
        "A open fds": [int(r["a_fds"]) for r in rows],
        "B open fds": [int(r["b_fds"]) for r in rows],
    }
    ok = True
    for name, ys in series.items():
        # The last sample is taken after the load ended (its connections closed): plotted, not
        # held to the bound.
        settled = [y for x, y in zip(t[:-1], ys[:-1]) if x >= SETTLE_S]
        if not settled:
            print(f"{name}: run shorter than {SETTLE_S} s")
            ok = False
            continue
        base, lo, hi = settled[0], min(settled), max(settled)
        if "RSS" in name:
            within = hi <= base * (1 + RSS_BOUND) and lo >= base * (1 - RSS_BOUND)
            print(f"{name}: {base:.1f} at {SETTLE_S} s, then {lo:.1f}..{hi:.1f} "
                  f"({(hi / base - 1) * 100:+.1f} % max), bound +-{RSS_BOUND * 100:.0f} %: {'ok' if within else 'EXCEEDED'}")
        else:
            within = hi - base <= FD_BOUND and base - lo <= FD_BOUND
            print(f"{name}: {base} at {SETTLE_S} s, then {lo}..{hi}, bound +-{FD_BOUND}: {'ok' if within else 'EXCEEDED'}")
        ok &= within
    print(f"samples: {len(t)} over {t[-1] if t else 0} s; within bounds: {'yes' if ok else 'NO'}")
    svg = path.rsplit(".", 1)[0] + ".svg"
    open(svg, "w").write(draw(t, series))
    print(f"plot: {svg}")


def draw(t, series):
    w, h, pad = 760, 220, 50
    colours = ["#1f77b4", "#ff7f0e"]
    panels = [("RSS (MiB)", ["A RSS (MiB)", "B RSS (MiB)"]), ("open fds", ["A open fds", "B open fds"])]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h * 2 + 20}" font-family="sans-serif" font-size="11">']
    xmax = max(t) or 1
    for i, (title, names) in enumerate(panels):
        y0 = i * (h + 10)
        ymax = max(max(series[n]) for n in names) * 1.15 or 1
        out.append(f'<text x="{pad}" y="{y0 + 14}" font-size="13">{title} of registrars A and B over the soak</text>')
        out.append(f'<rect x="{pad}" y="{y0 + 20}" width="{w - 2 * pad}" height="{h - 50}" fill="none" stroke="#999"/>')
        for k in range(5):
            v = ymax * k / 4
            y = y0 + 20 + (h - 50) * (1 - k / 4)
            out.append(f'<text x="{pad - 4}" y="{y + 4:.1f}" text-anchor="end">{v:.0f}</text>')
        for k in range(6):
            x = pad + (w - 2 * pad) * k / 5
            out.append(f'<text x="{x:.1f}" y="{y0 + h - 16}" text-anchor="middle">{xmax * k / 5:.0f} s</text>')
        for c, n in enumerate(names):
            pts = " ".join(
                f"{pad + (w - 2 * pad) * x / xmax:.1f},{y0 + 20 + (h - 50) * (1 - y / ymax):.1f}"
                for x, y in zip(t, series[n]))
            out.append(f'<polyline fill="none" stroke="{colours[c]}" stroke-width="1.5" points="{pts}"/>')
            out.append(f'<text x="{w - pad - 120}" y="{y0 + 36 + 14 * c}" fill="{colours[c]}">{n}</text>')
    out.append("</svg>")
    return "\n".join(out)


if __name__ == "__main__":
    main(sys.argv[1])
