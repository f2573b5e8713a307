"""`make demo`: a real corosync cluster arbitrated by votemesh's qnetd, with live status.

In network namespaces this script creates (a private bridge, no route out): one host runs
`votemesh-qnetd`, N hosts run Debian's corosync + corosync-qdevice with certificates from our
tooling. It shows the cluster healthy, splits it in half (both halves still reach the qnetd),
prints the arbitrator's decision and each node's quorum as it changes, heals it, and cleans up.

    python -m votemesh_lab.demo_corosync [--nodes 2|4] [--keep-seconds N]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from votemesh_lab import corosync, netns
from votemesh_lab.corosync import (
    COROSYNC_PRIVATE_DIRS,
    CorosyncCluster,
    QdeviceConfig,
    QuorumStatus,
)
from votemesh_lab.netns import Lab
from votemesh_lab.qnetd import VotemeshQnetd

CLUSTER = "demo"


def missing() -> str | None:
    """Why the demo cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network and mount namespaces); run it with sudo"
    reason = netns.missing_reason() or corosync.missing_reason()
    if reason is None:
        reason = VotemeshQnetd.unavailable_reason()
    return reason


def qnetd_view(qnetd: VotemeshQnetd) -> dict[int, str]:
    """Node id -> the vote the arbitrator last gave it (ACK/NACK), from its control socket."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(3)
        sock.connect(str(qnetd.workdir / "control.sock"))
        sock.sendall(b"json\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    snap: dict[str, Any] = json.loads(data.decode().partition("\n")[2])
    return {
        c["node_id"]: c["last_ack_nack"] or "-"
        for cluster in snap["clusters"]
        for c in cluster["clients"]
    }


def node_cell(status: QuorumStatus | None) -> str:
    if status is None:
        return "   (no answer)    "
    state = "QUORATE " if status.quorate else "inquorate"
    device = "+qdev" if status.has_qdevice_vote else "     "
    members = ",".join(str(m) for m in sorted(status.member_ids))
    return f"{state} {status.total_votes}/{status.expected_votes} {device} [{members}]"


def show(cluster: CorosyncCluster, qnetd: VotemeshQnetd, started: float, label: str) -> None:
    """One status line: time, phase, each node's quorum, and the arbitrator's votes."""
    cells = []
    for name in cluster.hosts:
        try:
            cells.append(f"{name}: {node_cell(cluster.status(name))}")
        except Exception:  # noqa: BLE001 (a node may be between states; show it, don't die)
            cells.append(f"{name}: {node_cell(None)}")
    try:
        votes = qnetd_view(qnetd)
        view = " ".join(f"{n}={v}" for n, v in sorted(votes.items()))
    except OSError:
        view = "?"
    print(
        f"{time.monotonic() - started:6.1f}s  {label:<8} | "
        + " | ".join(cells)
        + f" || qnetd: {view}"
    )


def watch(
    cluster: CorosyncCluster, qnetd: VotemeshQnetd, started: float, label: str, seconds: float
) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        show(cluster, qnetd, started, label)
        time.sleep(1.0)


def decisions(qnetd: VotemeshQnetd, since: int) -> list[str]:
    """Decision lines the qnetd logged after line `since`."""
    if qnetd.process is None:
        raise RuntimeError("qnetd.process is not set")
    lines = qnetd.process.log_path.read_text(errors="replace").splitlines()[since:]
    out = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("event") == "decision":
            out.append(f"    qnetd decision: {record['decision']}  votes {record['votes']}")
    return out


def log_length(qnetd: VotemeshQnetd) -> int:
    if qnetd.process is None:
        raise RuntimeError("qnetd.process is not set")
    return len(qnetd.process.log_path.read_text(errors="replace").splitlines())


def run(nodes: int, keep: float) -> None:
    started = time.monotonic()
    names = [f"n{i}" for i in range(1, nodes + 1)]
    with tempfile.TemporaryDirectory(prefix="votemesh-demo-") as tmp:
        workdir = Path(tmp)
        with Lab(workdir, ["qnetd", *names], private_dirs=COROSYNC_PRIVATE_DIRS) as lab:
            print(f"lab {lab.lab_id}: bridge + {nodes} corosync nodes + 1 qnetd host, no route out")
            qnetd = VotemeshQnetd(workdir / "qnetd")
            qnetd.start(lab["qnetd"])
            print(
                f"votemesh-qnetd listening on {qnetd.address}:{qnetd.port} (CA made on first start)"
            )
            credentials = qnetd.client_credentials(CLUSTER)
            print("cluster certificate from `votemesh-qnetd certs client`, imported on each node")
            device = QdeviceConfig(
                lab["qnetd"].address, qnetd.port, "ffsplit", tie_breaker="lowest"
            )
            cluster = CorosyncCluster([lab[n] for n in names], CLUSTER, device)
            cluster.configure(credentials)
            cluster.start()
            print("corosync + corosync-qdevice (ffsplit, tie-breaker lowest) started\n")
            watch(cluster, qnetd, started, "start", keep + 3)
            half = nodes // 2
            left, right = names[:half], names[half:]
            mark = log_length(qnetd)
            print(f"\n--- split {left} | {right}: both halves still reach the qnetd ---")
            lab.partition(left, right)
            watch(cluster, qnetd, started, "split", keep + 4)
            print("\n".join(decisions(qnetd, mark)))
            mark = log_length(qnetd)
            print("\n--- heal ---")
            lab.heal()
            watch(cluster, qnetd, started, "healed", keep + 3)
            print("\n".join(decisions(qnetd, mark)))
            cluster.stop()
            qnetd.stop()
    print("\nlab removed: namespaces, bridge and processes are gone.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, choices=[2, 4], default=2)
    parser.add_argument("--keep-seconds", type=float, default=2.0, help="extra seconds per phase")
    args = parser.parse_args(argv)
    reason = missing()
    if reason is not None:
        print(f"votemesh demo: {reason}", file=sys.stderr)
        return 2
    run(args.nodes, args.keep_seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
