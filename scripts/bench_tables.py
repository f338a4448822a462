#!/usr/bin/env python3
"""Markdown tables of `db-locks bench --json` results, for BENCHMARKS.md (standard library only).

Usage:
    scripts/bench_tables.py LABEL:STORE=FILE [LABEL:STORE=FILE ...]

The arguments are those of scripts/bench_chart.py. One set of tables per label (ratios to the
same run's baselines first, absolute figures second); with two or more labels, a comparison of
the first label with each other one follows (e.g. before -> after).
"""

import json
import math
import sys

STORE_ORDER = ["sqlite", "postgres", "mysql", "mariadb", "redis", "dynamodb", "ddb"]
SETTINGS = [("threads", 1), ("threads", 8), ("processes", 1), ("processes", 8)]
BASELINE = {"pg_advisory_lock": "`pg_advisory_lock`", "redis_set_nx": "`SET NX` polled every 10 ms"}


def load(specs):
    results, labels, stores = {}, [], []
    for spec in specs:
        if "=" not in spec or ":" not in spec.split("=", 1)[0]:
            sys.exit(f"bench_tables: `{spec}` is not LABEL:STORE=FILE")
        name, path = spec.split("=", 1)
        label, store = name.split(":", 1)
        with open(path, encoding="utf-8") as f:
            results[(label, store)] = json.loads(f.read().strip().splitlines()[-1])
        labels += [label] if label not in labels else []
        stores += [store] if store not in stores else []
    stores.sort(key=lambda s: (STORE_ORDER.index(s) if s in STORE_ORDER else 99, s))
    return results, labels, stores


def us(x):
    """Microseconds, readably: `7.0 µs`, `854 µs`, `4.44 ms`, `1.23 s`."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if x >= 1e6:
        return f"{x / 1e6:.2f} s"
    if x >= 1e4:
        return f"{x / 1e3:.1f} ms"
    if x >= 1e3:
        return f"{x / 1e3:.2f} ms"
    if x >= 100:
        return f"{x:.0f} µs"
    return f"{x:.1f} µs"


def times(x, digits=2):
    if x is None or (isinstance(x, float) and (math.isnan(x) or math.isinf(x))):
        return "n/a"
    if x >= 100:
        return f"{x:.0f}×"
    if x >= 10:
        return f"{x:.1f}×"
    return f"{x:.{digits}f}×"


def ratio_field(report):
    b = report.get("baseline")
    if not b:
        return None
    return "ratio_to_advisory" if b["kind"] == "pg_advisory_lock" else "ratio_to_set_nx"


def handoff_row(report, sharing, waiters):
    for row in report.get("handoff", {}).get(sharing, []):
        if row["waiters"] == waiters:
            return row
    return None


def sweep(report):
    return {r["threads"]: r for r in report["contended"].get("sweep", [])}


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def setting_name(sharing, waiters):
    return f"{sharing}, {waiters} waiter{'s' if waiters != 1 else ''}"


def label_tables(results, label, stores):
    reports = [(s, results[(label, s)]) for s in stores if (label, s) in results]
    out = []

    out.append(f"#### Hand-off in round trips ({label})\n")
    out.append(
        "p50 / p99 of the hand-off (release call returning → next grant returning) divided by "
        "the mean `round_trip` of the same run.\n"
    )
    rows = []
    for store, r in reports:
        rt = r["round_trip"]["mean_us"]
        cells = []
        for sharing, waiters in SETTINGS:
            h = handoff_row(r, sharing, waiters)
            cells.append("n/a" if h is None else f"{times(h['p50_us'] / rt)} / {times(h['p99_us'] / rt)}")
        rows.append([store] + cells)
    out.append(table(["store"] + [setting_name(*k) for k in SETTINGS], rows) + "\n")

    out.append(f"#### Hand-off against the store's own lock ({label})\n")
    out.append(
        "p50 / p99 of db-locks' hand-off divided by the baseline's, both timed from the release "
        "(unlock) call's start to the grant returning (`ratio_to_advisory`, `ratio_to_set_nx`); "
        "and db-locks' uncontended `acquire_release` divided by the baseline's lock + unlock "
        "(means).\n"
    )
    rows = []
    for store, r in reports:
        field = ratio_field(r)
        if not field:
            rows.append([store, "none"] + ["n/a"] * (len(SETTINGS) + 1))
            continue
        cells = []
        for sharing, waiters in SETTINGS:
            h = handoff_row(r, sharing, waiters)
            cells.append("n/a" if h is None else f"{times(h[field]['p50'])} / {times(h[field]['p99'])}")
        rows.append(
            [store, BASELINE.get(r["baseline"]["kind"], r["baseline"]["kind"])]
            + cells
            + [times(r["acquire_release"].get(field))]
        )
    out.append(
        table(
            ["store", "baseline"] + [setting_name(*k) for k in SETTINGS] + ["acquire_release"],
            rows,
        )
        + "\n"
    )

    out.append(f"#### Contention ({label})\n")
    out.append(
        "`--threads` threads loop acquire + release on one mutex for the run's box: grants/s as a "
        "ratio to 1 thread for as long in the same run, the lowest thread's share of the grants "
        "over the mean share (1 = perfectly even), and acquire requests per grant.\n"
    )
    counts = sorted({t for _, r in reports for t in sweep(r)})
    rows = []
    for store, r in reports:
        c = r["contended"]
        sw = sweep(r)
        rows.append(
            [store, c["threads"], f"{c['secs']:g} s"]
            + [times(sw[t]["ratio_to_single_thread"]) if t in sw else "n/a" for t in counts if t != 1]
            + [
                f"{c['shares']['min_over_mean']:.2f}",
                "n/a" if c.get("requests_per_grant") is None else f"{c['requests_per_grant']:.2f}",
            ]
        )
    out.append(
        table(
            ["store", "threads", "box"]
            + [f"rate, {t} thr. ÷ 1 thr." for t in counts if t != 1]
            + ["min share ÷ mean", "requests per grant"],
            rows,
        )
        + "\n"
    )

    out.append(f"#### Absolute figures ({label})\n")
    out.append(
        "Hand-off p50 / p99 from the release call returning, then from the release call's start; "
        "`early`: samples whose grant returned before the release call did (counted as 0 in the "
        "first figures), of all samples.\n"
    )
    rows = []
    for store, r in reports:
        for sharing, waiters in SETTINGS:
            h = handoff_row(r, sharing, waiters)
            if h is None:
                continue
            call = h.get("from_release_call", {})
            rows.append(
                [
                    store,
                    setting_name(sharing, waiters),
                    f"{us(h['p50_us'])} / {us(h['p99_us'])}",
                    f"{h['early']}/{h['samples']}",
                    f"{us(call.get('p50_us'))} / {us(call.get('p99_us'))}",
                ]
            )
        b = r.get("baseline")
        if b:
            h = b["handoff"]
            call = h.get("from_release_call", {})
            rows.append(
                [
                    store,
                    f"baseline: {BASELINE.get(b['kind'], b['kind'])}, 1 waiter",
                    f"{us(h['p50_us'])} / {us(h['p99_us'])}",
                    f"{h.get('early', 'n/a')}/{h.get('samples', 'n/a')}",
                    f"{us(call.get('p50_us'))} / {us(call.get('p99_us'))}",
                ]
            )
    out.append(
        table(
            ["store", "setting", "p50 / p99 from the release's return", "early", "p50 / p99 from the release call"],
            rows,
        )
        + "\n"
    )

    out.append("Latencies of single operations (mean; p50 / p99) and grants per second.\n")
    rows = []
    for store, r in reports:
        b = r.get("baseline")
        cyc = b["cycle"] if b else None
        sw = sweep(r)
        rows.append(
            [
                store,
                f"{us(r['round_trip']['mean_us'])}",
                f"{us(r['acquire_release']['mean_us'])} ({us(r['acquire_release']['p50_us'])} / {us(r['acquire_release']['p99_us'])})",
                "n/a" if not cyc else f"{us(cyc['mean_us'])} ({us(cyc['p50_us'])} / {us(cyc['p99_us'])})",
            ]
            + [f"{sw[t]['grants_per_sec']:.0f}" if t in sw else "n/a" for t in counts]
        )
    out.append(
        table(
            ["store", "round_trip", "acquire_release", "baseline lock + unlock"]
            + [f"grants/s, {t} thr." for t in counts],
            rows,
        )
        + "\n"
    )
    return "\n".join(out)


def comparison(results, first, other, stores):
    out = [f"#### {first} → {other}\n"]
    out.append(
        "Hand-off p50 / p99 (from the release call returning) and the contended grant rate, "
        f"{first} → {other}; the factor is {other} ÷ {first}.\n"
    )
    rows = []
    for store in stores:
        a, b = results.get((first, store)), results.get((other, store))
        if not a or not b:
            continue
        cells = []
        for sharing, waiters in SETTINGS:
            ha, hb = handoff_row(a, sharing, waiters), handoff_row(b, sharing, waiters)
            if ha is None or hb is None:
                cells.append("n/a")
                continue
            f50 = hb["p50_us"] / ha["p50_us"] if ha["p50_us"] > 0 else float("nan")
            cells.append(f"{us(ha['p50_us'])} → {us(hb['p50_us'])} ({times(f50)}); p99 {us(ha['p99_us'])} → {us(hb['p99_us'])}")
        ca, cb = a["contended"], b["contended"]
        cells.append(
            f"{ca['grants_per_sec']:.0f} → {cb['grants_per_sec']:.0f}/s "
            f"({times(ca['ratio_to_single_thread'])} → {times(cb['ratio_to_single_thread'])} of 1 thr.)"
        )
        rows.append([store] + cells)
    out.append(table(["store"] + [setting_name(*k) for k in SETTINGS] + ["contended"], rows) + "\n")
    return "\n".join(out)


def main(argv):
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    results, labels, stores = load(argv)
    parts = [label_tables(results, label, stores) for label in labels]
    parts += [comparison(results, labels[0], other, stores) for other in labels[1:]]
    print("\n".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
