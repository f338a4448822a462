#!/usr/bin/env python3
"""Charts of `db-locks bench --json` results, as plain SVG files (standard library only).

Usage:
    scripts/bench_chart.py [-o DIR] LABEL:STORE=FILE [LABEL:STORE=FILE ...]

Each argument names one result file: LABEL is the series it belongs to (`before`, `after`,
...), STORE the store it measured (`sqlite`, `postgres`, ...). For example:

    scripts/bench_chart.py -o bench/charts \\
        before:postgres=bench/results/before/postgres.json \\
        after:postgres=bench/results/after/postgres.json

Writes into DIR (default bench/charts):
    handoff.svg       hand-off p50 (dot) to p99 (end of the bar) per store, for threads and
                      processes with each number of waiters, one colour per label; log scale;
                      from the release call returning. The store's baseline hand-off p50
                      (pg_advisory_lock, SET NX polling), where there is one, is a dashed line,
                      from its unlock call's start (from the return it is often 0 on PostgreSQL).
    grants.svg        grants/s against the number of contending threads (the `contended.sweep`
                      runs), one panel per store, one line per label.
    grants_ratio.svg  the same rates divided by the same run's 1-thread rate, all stores in one
                      panel: 1.0 means contention costs nothing.
"""

import argparse
import json
import math
import os
import sys
from xml.sax.saxutils import escape

PALETTE = ["#4e79a7", "#e15759", "#59a14f", "#f28e2b", "#b07aa1", "#76b7b2", "#edc948"]
STORE_ORDER = ["sqlite", "postgres", "mysql", "mariadb", "redis", "dynamodb", "ddb"]
FONT = 'font-family="Helvetica, Arial, sans-serif"'


def parse_spec(spec):
    """`label:store=path` -> (label, store, path)."""
    if "=" not in spec:
        sys.exit(f"bench_chart: `{spec}` is not LABEL:STORE=FILE")
    name, path = spec.split("=", 1)
    if ":" in name:
        label, store = name.split(":", 1)
    else:
        label, store = "run", name
    if not label or not store or not path:
        sys.exit(f"bench_chart: `{spec}` is not LABEL:STORE=FILE")
    return label, store, path


def load(specs):
    """{(label, store): report}, the labels and the stores in a stable order."""
    results, labels, stores = {}, [], []
    for spec in specs:
        label, store, path = parse_spec(spec)
        try:
            with open(path, encoding="utf-8") as f:
                report = json.loads(f.read().strip().splitlines()[-1])
        except (OSError, ValueError, IndexError) as e:
            sys.exit(f"bench_chart: cannot read {path}: {e}")
        results[(label, store)] = report
        if label not in labels:
            labels.append(label)
        if store not in stores:
            stores.append(store)
    stores.sort(key=lambda s: (STORE_ORDER.index(s) if s in STORE_ORDER else 99, s))
    return results, labels, stores


class Svg:
    def __init__(self, width, height):
        self.width, self.height = width, height
        self.parts = []

    def add(self, text):
        self.parts.append(text)

    def text(self, x, y, s, size=12, anchor="start", weight="normal", fill="#222", halo=False):
        # A halo keeps a label readable where it crosses marks.
        h = ' stroke="white" stroke-width="3" paint-order="stroke"' if halo else ""
        self.add(
            f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
            f'font-weight="{weight}" fill="{fill}" {FONT}{h}>{escape(str(s))}</text>'
        )

    def line(self, x1, y1, x2, y2, stroke="#999", width=1, dash=None):
        d = f' stroke-dasharray="{dash}"' if dash else ""
        self.add(
            f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" '
            f'stroke="{stroke}" stroke-width="{width}"{d}/>'
        )

    def rect(self, x, y, w, h, fill, opacity=1.0):
        self.add(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" fill="{fill}" '
            f'fill-opacity="{opacity}"/>'
        )

    def circle(self, x, y, r, fill, stroke="none"):
        self.add(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r}" fill="{fill}" stroke="{stroke}"/>')

    def polyline(self, points, stroke, width=2, dash=None):
        pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
        d = f' stroke-dasharray="{dash}"' if dash else ""
        self.add(
            f'<polyline points="{pts}" fill="none" stroke="{stroke}" stroke-width="{width}"{d}/>'
        )

    def save(self, path):
        with open(path, "w", encoding="utf-8") as f:
            f.write(
                f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.width}" '
                f'height="{self.height}" viewBox="0 0 {self.width} {self.height}">\n'
            )
            f.write(f'<rect width="{self.width}" height="{self.height}" fill="white"/>\n')
            f.write("\n".join(self.parts))
            f.write("\n</svg>\n")


def fmt_us(us):
    """3 significant digits: `27.6 µs`, `5.22 ms`, `1 s`."""
    if us >= 1e6:
        return f"{us / 1e6:.3g} s"
    if us >= 1e3:
        return f"{us / 1e3:.3g} ms"
    return f"{us:.3g} µs"


BASELINE_NAMES = {"pg_advisory_lock": "advisory lock", "redis_set_nx": "SET NX, 10 ms poll"}


def fmt_rate(x):
    if x >= 1000:
        return f"{x / 1000:g}k"
    return f"{x:g}"


def legend(svg, x, y, labels, extra=()):
    for i, label in enumerate(labels):
        svg.rect(x, y + 18 * i - 9, 12, 12, PALETTE[i % len(PALETTE)])
        svg.text(x + 18, y + 18 * i + 1, label, size=12)
    for j, (draw, text) in enumerate(extra):
        yy = y + 18 * (len(labels) + j)
        draw(svg, x, yy)
        svg.text(x + 18, yy + 1, text, size=12)


def baseline_handoff_p50(report):
    """The baseline's hand-off p50 from its unlock call's start (never 0, unlike the figure
    from the unlock's return, which PostgreSQL's advisory locks often beat); older reports
    without it: from the return."""
    handoff = report["baseline"]["handoff"]
    return handoff.get("from_release_call", handoff)["p50_us"]


def handoff_chart(results, labels, stores, path):
    """Hand-off p50..p99 per store and setting, log scale."""
    settings = []  # (sharing, waiters), in the order the reports give them
    for report in results.values():
        for sharing in ("threads", "processes"):
            for row in report.get("handoff", {}).get(sharing, []):
                key = (sharing, row["waiters"])
                if key not in settings:
                    settings.append(key)
    settings.sort(key=lambda k: (k[0] != "threads", k[1]))
    values = [
        v
        for report in results.values()
        for sharing in ("threads", "processes")
        for row in report.get("handoff", {}).get(sharing, [])
        for v in (row["p50_us"], row["p99_us"])
        if v > 0
    ]
    values += [
        baseline_handoff_p50(r)
        for r in results.values()
        if "baseline" in r and baseline_handoff_p50(r) > 0
    ]
    if not values or not settings:
        return False
    lo = 10 ** math.floor(math.log10(min(values) / 3))
    hi = 10 ** math.ceil(math.log10(max(values)))
    if hi <= lo:
        hi = lo * 10

    panel_w = max(240, 54 * len(settings) + 12 * len(settings) * len(labels))
    left, top, plot_h = 70, 80, 320
    width = left + panel_w * len(stores) + 190
    height = top + plot_h + 50
    svg = Svg(width, height)
    svg.text(
        left,
        24,
        "Hand-off: release returning → next grant returning (dot: p50, bar to: p99; log scale)",
        size=15,
        weight="bold",
    )
    svg.text(
        left,
        42,
        "waiters already waiting; threads = one manager, processes = one connect each",
        size=12,
        fill="#555",
    )

    def y_of(us):
        us = max(us, lo)
        return top + plot_h - (math.log10(us) - math.log10(lo)) / (
            math.log10(hi) - math.log10(lo)
        ) * plot_h

    # Decade grid across all panels.
    decade = lo
    while decade <= hi * 1.0001:
        y = y_of(decade)
        svg.line(left, y, left + panel_w * len(stores), y, stroke="#e3e3e3")
        svg.text(left - 6, y + 4, fmt_us(decade), size=11, anchor="end", fill="#555")
        decade *= 10
    svg.line(left, top, left, top + plot_h, stroke="#888")

    for p, store in enumerate(stores):
        x0 = left + p * panel_w
        svg.line(x0, top, x0, top + plot_h, stroke="#bbb")
        svg.text(x0 + panel_w / 2, top - 10, store, size=13, anchor="middle", weight="bold")
        slot = (panel_w - 20) / len(settings)
        # The baseline's hand-off, if any run of this store has one (the first label's).
        for label in labels:
            report = results.get((label, store))
            if report and "baseline" in report:
                b = report["baseline"]
                p50 = baseline_handoff_p50(report)
                y = y_of(p50)
                svg.line(x0 + 4, y, x0 + panel_w - 4, y, stroke="#333", width=1.2, dash="5,4")
                svg.text(
                    x0 + panel_w - 6,
                    y - 4,
                    f'{BASELINE_NAMES.get(b["kind"], b["kind"])}: p50 {fmt_us(p50)} from its unlock call',
                    size=10,
                    anchor="end",
                    fill="#333",
                    halo=True,
                )
                break
        for s, (sharing, waiters) in enumerate(settings):
            cx = x0 + 10 + slot * (s + 0.5)
            svg.text(cx, top + plot_h + 16, sharing, size=10, anchor="middle")
            svg.text(
                cx,
                top + plot_h + 30,
                f"{waiters} waiter{'s' if waiters != 1 else ''}",
                size=10,
                anchor="middle",
                fill="#555",
            )
            n = len(labels)
            for i, label in enumerate(labels):
                report = results.get((label, store))
                if not report:
                    continue
                rows = [
                    r
                    for r in report.get("handoff", {}).get(sharing, [])
                    if r["waiters"] == waiters
                ]
                if not rows:
                    continue
                row = rows[0]
                colour = PALETTE[i % len(PALETTE)]
                x = cx + (i - (n - 1) / 2) * min(14, slot / (n + 1))
                y50, y99 = y_of(row["p50_us"]), y_of(row["p99_us"])
                svg.rect(x - 3, y99, 6, max(1.0, y50 - y99), colour, opacity=0.35)
                svg.line(x - 5, y99, x + 5, y99, stroke=colour, width=2)
                svg.circle(x, y50, 4, colour)
    svg.line(left + panel_w * len(stores), top, left + panel_w * len(stores), top + plot_h, stroke="#bbb")

    def baseline_key(svg, x, y):
        svg.line(x, y - 3, x + 12, y - 3, stroke="#333", width=1.2, dash="5,4")

    legend(
        svg,
        left + panel_w * len(stores) + 20,
        top + 10,
        labels,
        [(baseline_key, "baseline hand-off p50")],
    )
    svg.save(path)
    return True


def sweep_of(report):
    """[(threads, grants_per_sec, ratio_to_single_thread)] of one report."""
    c = report.get("contended", {})
    rows = c.get("sweep")
    if not rows:  # an older report: its single run only
        if "grants_per_sec" not in c:
            return []
        return [(c["threads"], c["grants_per_sec"], c.get("ratio_to_single_thread", float("nan")))]
    return [(r["threads"], r["grants_per_sec"], r["ratio_to_single_thread"]) for r in rows]


def axis_threads(results):
    counts = sorted({t for r in results.values() for t, _, _ in sweep_of(r)})
    return counts


def grants_chart(results, labels, stores, path):
    """grants/s against thread count, a panel per store (each its own y scale)."""
    counts = axis_threads(results)
    if not counts:
        return False
    panel_w, panel_h, gap = 230, 220, 40
    left, top = 60, 80
    width = left + (panel_w + gap) * len(stores) + 150
    height = top + panel_h + 50
    svg = Svg(width, height)
    svg.text(left, 24, "Grants per second against contending threads (one mutex)", size=15, weight="bold")
    svg.text(left, 42, "each run time-boxed; threads loop acquire + release", size=12, fill="#555")
    for p, store in enumerate(stores):
        x0 = left + p * (panel_w + gap)
        series = [(label, sweep_of(results[(label, store)])) for label in labels if (label, store) in results]
        top_value = max([g for _, rows in series for _, g, _ in rows] + [1.0])
        step = nice_step(top_value / 4)
        y_max = step * math.ceil(top_value / step)
        svg.text(x0 + panel_w / 2, top - 10, store, size=13, anchor="middle", weight="bold")
        v = 0.0
        while v <= y_max * 1.0001:
            y = top + panel_h - v / y_max * panel_h
            svg.line(x0, y, x0 + panel_w, y, stroke="#e3e3e3")
            svg.text(x0 - 4, y + 4, fmt_rate(round(v, 6)), size=10, anchor="end", fill="#555")
            v += step
        svg.line(x0, top, x0, top + panel_h, stroke="#888")
        svg.line(x0, top + panel_h, x0 + panel_w, top + panel_h, stroke="#888")

        def x_of(t):
            i = counts.index(t)
            return x0 + 15 + (panel_w - 30) * (i / max(1, len(counts) - 1))

        for t in counts:
            svg.text(x_of(t), top + panel_h + 16, t, size=10, anchor="middle")
        svg.text(x0 + panel_w / 2, top + panel_h + 34, "threads", size=11, anchor="middle", fill="#555")
        for label, rows in series:
            i = labels.index(label)
            colour = PALETTE[i % len(PALETTE)]
            pts = [(x_of(t), top + panel_h - g / y_max * panel_h) for t, g, _ in sorted(rows)]
            if len(pts) > 1:
                svg.polyline(pts, colour)
            for x, y in pts:
                svg.circle(x, y, 3.5, colour)
    legend(svg, left + (panel_w + gap) * len(stores), top + 10, labels)
    svg.save(path)
    return True


def grants_ratio_chart(results, labels, stores, path):
    """Rate / 1-thread rate against thread count, every store and label in one panel."""
    counts = axis_threads(results)
    if not counts:
        return False
    left, top, plot_w, plot_h = 70, 60, 480, 300
    series = []
    for store in stores:
        for label in labels:
            if (label, store) in results:
                rows = [(t, r) for t, _, r in sweep_of(results[(label, store)]) if not math.isnan(r)]
                if rows:
                    series.append((store, label, sorted(rows)))
    if not series:
        return False
    top_value = max([r for _, _, rows in series for _, r in rows] + [1.0])
    step = nice_step(top_value / 5)
    y_max = step * math.ceil(top_value / step)
    width = left + plot_w + 240
    height = top + plot_h + 50
    svg = Svg(width, height)
    svg.text(left, 24, "Grant rate relative to one thread (same run)", size=15, weight="bold")
    svg.text(left, 42, "1.0: contention costs nothing; below: waiting costs grants", size=12, fill="#555")
    v = 0.0
    while v <= y_max * 1.0001:
        y = top + plot_h - v / y_max * plot_h
        svg.line(left, y, left + plot_w, y, stroke="#e3e3e3")
        svg.text(left - 6, y + 4, f"{v:g}", size=10, anchor="end", fill="#555")
        v = round(v + step, 10)
    y1 = top + plot_h - 1.0 / y_max * plot_h
    svg.line(left, y1, left + plot_w, y1, stroke="#777", dash="4,3")
    svg.line(left, top, left, top + plot_h, stroke="#888")
    svg.line(left, top + plot_h, left + plot_w, top + plot_h, stroke="#888")

    def x_of(t):
        return left + 20 + (plot_w - 40) * (counts.index(t) / max(1, len(counts) - 1))

    for t in counts:
        svg.text(x_of(t), top + plot_h + 16, t, size=10, anchor="middle")
    svg.text(left + plot_w / 2, top + plot_h + 34, "threads", size=11, anchor="middle", fill="#555")
    dashes = [None, "6,3", "2,3", "8,3,2,3"]
    for k, (store, label, rows) in enumerate(series):
        colour = PALETTE[stores.index(store) % len(PALETTE)]
        dash = dashes[labels.index(label) % len(dashes)]
        pts = [(x_of(t), top + plot_h - r / y_max * plot_h) for t, r in rows]
        if len(pts) > 1:
            svg.polyline(pts, colour, dash=dash)
        for x, y in pts:
            svg.circle(x, y, 3, colour)
        lx, ly = left + plot_w + 20, top + 10 + 18 * k
        svg.line(lx, ly - 4, lx + 22, ly - 4, stroke=colour, width=2, dash=dash)
        svg.text(lx + 28, ly, f"{store} ({label})", size=12)
    svg.save(path)
    return True


def nice_step(raw):
    """1, 2 or 5 times a power of ten, at least `raw`."""
    if raw <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if m * power >= raw:
            return m * power
    return 10 * power


def main(argv):
    parser = argparse.ArgumentParser(
        description="SVG charts of `db-locks bench --json` results.",
        epilog="Example: scripts/bench_chart.py before:postgres=bench/results/before/postgres.json",
    )
    parser.add_argument("-o", "--out", default="bench/charts", help="output directory (default bench/charts)")
    parser.add_argument("results", nargs="+", metavar="LABEL:STORE=FILE")
    args = parser.parse_args(argv)
    results, labels, stores = load(args.results)
    os.makedirs(args.out, exist_ok=True)
    written = []
    for name, chart in (
        ("handoff.svg", handoff_chart),
        ("grants.svg", grants_chart),
        ("grants_ratio.svg", grants_ratio_chart),
    ):
        path = os.path.join(args.out, name)
        if chart(results, labels, stores, path):
            written.append(path)
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
