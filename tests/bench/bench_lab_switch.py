"""The lab's tap switch itself: frames/s, added latency, and measured vs asked netem values.

    python -m tests.bench lab_switch
    BENCH_LAB_SWITCH_COUNT=500 python -m tests.bench lab_switch    # a quicker, rougher run

Two hosts, first on the userspace tap switch (`votemesh_lab.switch`), then on a kernel bridge:

- frames/s forwarded: one sender floods 100-byte UDP datagrams for FLOOD_SECONDS; the
  receiver counts what arrived between its first and last datagram;
- added latency at zero impairment: UDP round trips (an echo in the other host), p50/p99, on the
  switch and on the kernel bridge;
- measured vs asked (switch only): n1 -> n2, COUNT timestamped datagrams at 200/s one way
  (one kernel clock) for loss, delay quantiles, duplicates, out-of-order arrivals; rate goodput
  from 500 datagrams of 1000 bytes. "asked" is what the pure netem core gives for the same
  words (delay quantiles plus the zero-impairment one-way baseline).

Needs root (namespaces, /dev/net/tun); prints why and returns otherwise. Never fails on timing.
"""

from __future__ import annotations

import os
import statistics
import tempfile
from pathlib import Path

from votemesh_lab.grudge import Matrix, Rule
from votemesh_lab.netem import Impairment
from votemesh_lab.netns import Lab, missing_reason

from tests.lab import traffic

FLOOD_SECONDS = 3.0
INTERVAL = 0.005
HOSTS = ("n1", "n2")


def frames_per_second(lab: Lab) -> tuple[float, int]:
    """Datagrams/s received while n1 floods n2 with 100-byte UDP, and how many were sent."""
    counter = traffic.Program(lab["n2"], "count", lab["n2"].address, traffic.PORT, 1.0, 30)
    sent = traffic.run(lab["n1"], "flood", lab["n2"].address, traffic.PORT, FLOOD_SECONDS, 100)
    got = counter.result()
    return got["received"] / max(got["seconds"], 1e-9), int(sent["sent"])


def rtts(lab: Lab, count: int = 400) -> tuple[float, float]:
    """UDP round trip n1 -> n2 -> n1, p50 and p99 in ms."""
    echo = traffic.Program(lab["n2"], "echo", lab["n2"].address, traffic.PORT, 60)
    times = traffic.run(lab["n1"], "rtt", lab["n2"].address, traffic.PORT, count, 0.005)["rtts_ms"]
    echo.stop()
    q = statistics.quantiles(times, n=100)
    return q[49], q[98]


def shaped(**words: str) -> Matrix:
    """n1 -> n2 shaped with these words."""
    rule = Rule(frozenset({"n1"}), frozenset({"n2"}), True, Impairment.parse(words))
    return Matrix(HOSTS).shape(rule)


def asked_vs_measured(lab: Lab, count: int) -> list[tuple[str, str, str]]:
    """Rows (what, asked, measured) for loss, delay, duplicate, reorder and rate."""
    rows = []
    lab.apply(Matrix(HOSTS))
    base = statistics.median(
        a.delay_ms for a in traffic.one_way(lab["n1"], lab["n2"], 200, INTERVAL)
    )
    rows.append(("one-way delay, no impairment (p50)", "-", f"{base:.2f} ms"))
    words = {"delay": "20ms", "jitter": "5ms", "distribution": "normal", "loss": "10%"}
    lab.apply(shaped(**words))
    m = traffic.measure(traffic.one_way(lab["n1"], lab["n2"], count, INTERVAL), count)
    asked = traffic.predicted(words, 100_000, INTERVAL)
    rows.append(("loss 10%", "10.0 %", f"{m.loss * 100:.1f} %"))
    rows += [
        (f"delay 20ms jitter 5ms normal, p{round(q * 100)}",
         f"{asked.quantile(q) + base:.2f} ms", f"{m.quantile(q):.2f} ms")
        for q in (0.1, 0.5, 0.9)
    ]  # fmt: skip
    words = {"delay": "10ms", "reorder": "25%", "duplicate": "5%"}
    lab.apply(shaped(**words))
    arrivals = traffic.one_way(lab["n1"], lab["n2"], count, INTERVAL)
    m = traffic.measure(arrivals, count)
    sent = sorted({a.seq: a.sent_ns / 1e9 for a in arrivals}.items())
    asked = traffic.predicted_at(words, [t for _, t in sent], repeat=10)
    rows.append(("duplicate 5%", "5.0 %", f"{m.duplicates / count * 100:.1f} %"))
    at_once = sum(1 for d in m.delays_ms if d < 5) / count
    rows.append(("reorder 25% gap 1: sent at once (< 5 ms)", "25.0 %", f"{at_once * 100:.1f} %"))
    rows.append(
        ("reorder 25% gap 1 on 10ms: out-of-order arrivals",
         f"{asked.out_of_order / asked.sent * 100:.1f} %", f"{m.out_of_order / count * 100:.1f} %")
    )  # fmt: skip
    lab.apply(shaped(rate="2mbit"))
    arrivals = traffic.one_way(lab["n1"], lab["n2"], 500, 0.001, 1000)
    seconds = (arrivals[-1].recv_ns - arrivals[0].recv_ns) / 1e9
    want = 2e6 * 1000 / (1000 + traffic.FRAME_OVERHEAD)
    rows.append(
        ("rate 2mbit: goodput of 1000-byte datagrams",
         f"{want / 1e6:.3f} Mbit/s", f"{(len(arrivals) - 1) * 8000 / seconds / 1e6:.3f} Mbit/s")
    )  # fmt: skip
    lab.apply(Matrix(HOSTS))
    return rows


def bench(workdir: Path, count: int) -> None:
    """Both switches, then the table."""
    figures: dict[str, tuple[float, int, float, float]] = {}
    rows: list[tuple[str, str, str]] = []
    for kind in ("tap", "bridge"):
        with Lab(workdir / kind, list(HOSTS), switch=kind, switch_seed=1) as lab:
            fps, sent = frames_per_second(lab)
            p50, p99 = rtts(lab)
            figures[kind] = (fps, sent, p50, p99)
            if kind == "tap":
                verification = lab.apply(Matrix(HOSTS))
                print(f"  {verification}")
                rows = asked_vs_measured(lab, count)
    print(f"  {'switch':<22} {'frames/s':>10} {'sent/s':>10} {'RTT p50':>10} {'RTT p99':>10}")
    for kind, (fps, sent, p50, p99) in figures.items():
        name = "votemesh_lab.switch" if kind == "tap" else "kernel bridge"
        print(
            f"  {name:<22} {fps:>10.0f} {sent / FLOOD_SECONDS:>10.0f} {p50:>7.3f} ms {p99:>7.3f} ms"
        )
    title = f"n1 -> n2, {count} datagrams at 200/s"
    print(f"\n  {title:<52} {'asked':>14} {'measured':>14}")
    for what, asked, measured in rows:
        print(f"  {what:<52} {asked:>14} {measured:>14}")


def main() -> None:
    """Run it (or say why it cannot run here)."""
    reason = missing_reason("tap")
    if reason is not None:
        print(f"  skipped: {reason}")
        return
    count = int(os.environ.get("BENCH_LAB_SWITCH_COUNT", "2000"))
    print(
        f"  host load average (1 min) at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    with tempfile.TemporaryDirectory(prefix="bench-lab-switch-") as tmp:
        bench(Path(tmp), count)


if __name__ == "__main__":
    main()
