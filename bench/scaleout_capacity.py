"""Capacity estimate for 20 M sockets from the per-process figures `bench/scaleout.py` measured.

`estimate(measured, assumptions)` is plain arithmetic, kept apart from the
measuring so the report can show every step. Inputs measured on this machine:
server RSS per idle socket (KiB), server CPU per delivery (µs, steady and
burst), server CPU per sign-in (ms), a process's RSS before any socket (MiB).
Everything about the workload (sockets, post rate, follower distribution,
reconnects, budgets) is an assumption, stated in `ASSUMPTIONS` and printed.
"""

from __future__ import annotations

import math
from typing import Any

ASSUMPTIONS: dict[str, Any] = {
    "sockets": 20_000_000,
    "peak_posts_per_s": 1_000,
    # (share of posts, online followers of the post's owner): most posts reach few
    # sockets, a few reach very many; the mean is what the deliveries cost
    "follower_distribution": [(0.90, 50), (0.09, 1_000), (0.009, 20_000), (0.001, 1_000_000)],
    "reconnect_every_s": 900,  # each socket signs in again every 15 min on average
    "cpu_headroom": 0.5,  # a process runs at most at half its core, averaged over a second
    "process_rss_budget_gib": 4.0,  # server RSS a process may reach
    "processes_per_core": 1,  # one event loop each: a Python process uses one core at most
    "worst_post_followers": 2_000_000,  # the biggest creator: 10 % of the sockets online
}


def expected_processes(followers: float, processes: int) -> float:
    """Processes holding at least one of `followers` sockets spread uniformly at random."""
    if processes <= 0:
        return 0.0
    return processes * (1.0 - (1.0 - 1.0 / processes) ** followers)


def estimate(measured: dict[str, float], a: dict[str, Any] | None = None) -> dict[str, Any]:
    """Processes, cores, memory and Redis pub/sub load for `a["sockets"]`, with the steps.

    `measured` needs `kib_per_socket`, `cpu_us_per_delivery` (steady),
    `cpu_us_per_delivery_burst`, `sign_in_cpu_ms` and `base_rss_mib`. Returns
    `{"assumptions", "measured", "steps": [(what, formula, value)], "result"}`.
    """
    a = {**ASSUMPTIONS, **(a or {})}
    m = measured
    steps: list[tuple[str, str, float]] = []

    def step(what: str, formula: str, value: float) -> float:
        steps.append((what, formula, value))
        return value

    dist = a["follower_distribution"]
    mean_f = step("deliveries per post (mean online followers)",
                  " + ".join(f"{s:g}x{f:,}" for s, f in dist), sum(s * f for s, f in dist))  # fmt: skip
    deliveries = step("deliveries/s at peak", f"{a['peak_posts_per_s']:,} posts/s x {mean_f:,.0f}",
                      a["peak_posts_per_s"] * mean_f)  # fmt: skip
    per_socket_deliveries = deliveries / a["sockets"]
    connects = step("sign-ins/s", f"{a['sockets']:,} / {a['reconnect_every_s']} s",
                    a["sockets"] / a["reconnect_every_s"])  # fmt: skip
    cpu_per_socket = step(
        "CPU per socket (core)",
        f"{per_socket_deliveries:.4f} deliveries/s x {m['cpu_us_per_delivery']} µs + "
        f"1/{a['reconnect_every_s']} sign-ins/s x {m['sign_in_cpu_ms']} ms",
        per_socket_deliveries * m["cpu_us_per_delivery"] * 1e-6
        + m["sign_in_cpu_ms"] * 1e-3 / a["reconnect_every_s"],
    )
    by_cpu = step("sockets per process, CPU bound",
                  f"{a['cpu_headroom']} core / {cpu_per_socket:.3g}",
                  a["cpu_headroom"] / cpu_per_socket)  # fmt: skip
    budget_kib = a["process_rss_budget_gib"] * 2**20 - m["base_rss_mib"] * 1024
    by_mem = step("sockets per process, memory bound",
                  f"({a['process_rss_budget_gib']} GiB - {m['base_rss_mib']} MiB) / "
                  f"{m['kib_per_socket']} KiB", budget_kib / m["kib_per_socket"])  # fmt: skip
    per_process = step("sockets per process (the smaller, rounded down to 5,000)",
                       f"min({by_cpu:,.0f}, {by_mem:,.0f})",
                       max(5000, math.floor(min(by_cpu, by_mem) / 5000) * 5000))  # fmt: skip
    processes = step("processes", f"⌈{a['sockets']:,} / {per_process:,.0f}⌉",
                     math.ceil(a["sockets"] / per_process))  # fmt: skip
    cores = step("cores for the servers", f"{processes:,.0f} / {a['processes_per_core']}",
                 math.ceil(processes / a["processes_per_core"]))  # fmt: skip
    busy = step("cores busy at peak (deliveries + sign-ins)",
                f"{deliveries:,.0f} x {m['cpu_us_per_delivery']} µs + {connects:,.0f} x "
                f"{m['sign_in_cpu_ms']} ms",
                deliveries * m["cpu_us_per_delivery"] * 1e-6 + connects * m["sign_in_cpu_ms"] * 1e-3)  # fmt: skip
    memory = step("server RAM (GiB)",
                  f"{a['sockets']:,} x {m['kib_per_socket']} KiB + {processes:,.0f} x "
                  f"{m['base_rss_mib']} MiB",
                  (a["sockets"] * m["kib_per_socket"] / 2**20)
                  + processes * m["base_rss_mib"] / 1024)  # fmt: skip
    msgs_per_post = step(
        "Redis pub/sub messages per post (processes holding a follower)",
        " + ".join(f"{s:g}xE[{f:,} over {processes:,.0f}]" for s, f in dist),
        sum(s * expected_processes(f, int(processes)) for s, f in dist),
    )
    msgs = step("Redis pub/sub messages/s at peak",
                f"{a['peak_posts_per_s']:,} x {msgs_per_post:.1f}",
                a["peak_posts_per_s"] * msgs_per_post)  # fmt: skip
    worst_local = a["worst_post_followers"] / processes
    worst_ms = step("the biggest creator's post: one process's share of the fan-out (ms)",
                    f"{a['worst_post_followers']:,} / {processes:,.0f} x "
                    f"{m['cpu_us_per_delivery_burst']} µs",
                    worst_local * m["cpu_us_per_delivery_burst"] / 1000)  # fmt: skip
    restart_s = step("a restarted process's sockets signing in again elsewhere (CPU-s)",
                     f"{per_process:,.0f} x {m['sign_in_cpu_ms']} ms",
                     per_process * m["sign_in_cpu_ms"] / 1000)  # fmt: skip
    return {
        "assumptions": a,
        "measured": m,
        "steps": steps,
        "result": {
            "sockets_per_process": per_process,
            "processes": processes,
            "cores": cores,
            "cores_busy_at_peak": round(busy, 1),
            "ram_gib": round(memory),
            "pubsub_messages_per_post": round(msgs_per_post, 1),
            "deliveries_per_post": round(mean_f),
            "pubsub_messages_per_s": round(msgs),
            "delivery_cores": round(deliveries * m["cpu_us_per_delivery"] * 1e-6, 1),
            "sign_in_cores": round(connects * m["sign_in_cpu_ms"] * 1e-3, 1),
            "bound_by": "memory" if by_mem <= by_cpu else "CPU",
            "worst_post_ms_per_process": round(worst_ms, 1),
            "restart_cpu_s": round(restart_s, 1),
        },
    }
