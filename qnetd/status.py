"""Status of the arbitrator as data and as the text corosync-qnetd-tool prints (reference 9).

`snapshot(core, ...)` -> plain dict (also the `--json` output); `format_status` / `format_list`
render it like `corosync-qnetd-tool -s` / `-l [-v]`. Pure functions.
"""

from __future__ import annotations

from typing import Any

from proto.qnetd_enums import DecisionAlgorithm, Heuristics, TlsSupported
from qnetd.arbitration import QnetdCore
from qnetd.model import ClientState, Cluster, tie_breaker_text

ALGORITHM_TEXT = {
    DecisionAlgorithm.TEST: "Test",
    DecisionAlgorithm.FFSPLIT: "Fifty-Fifty split",
    DecisionAlgorithm.TWO_NODE_LMS: "2 Node LMS",
    DecisionAlgorithm.LMS: "LMS",
}
TLS_TEXT = {
    TlsSupported.UNSUPPORTED: "Unsupported",
    TlsSupported.SUPPORTED: "Supported",
    TlsSupported.REQUIRED: "Required",
}
VOTE_TEXT = {"ACK": "ACK", "NACK": "NACK", "ASK_LATER": "Ask later"}
VOTE_TEXT |= {"WAIT_FOR_REPLY": "Wait for reply", "NO_CHANGE": "No change"}


def _heur(value: Heuristics | None) -> str:
    return {None: "Undefined", Heuristics.PASS: "Pass", Heuristics.FAIL: "Fail"}[value]


def _client(core: QnetdCore, c: ClientState) -> dict[str, Any]:
    conn = core.connections.get(c.conn_id)
    return {
        "node_id": c.node_id,
        "address": c.address,
        "heartbeat_interval_ms": c.heartbeat_interval_ms,
        "config_version": c.config_version,
        "config_nodes": [[n.node_id, n.data_center_id] for n in c.config_nodes],
        "ring_id": str(c.ring_id),
        "membership": list(c.membership_nodes),
        "quorate": c.quorate,
        "heuristics": _heur(c.last_heuristics),
        "membership_heuristics": _heur(c.membership_heuristics),
        "regular_heuristics": _heur(c.regular_heuristics),
        "tls_active": bool(conn and conn.tls_started),
        "certificate_verified": bool(conn and conn.cert_verified),
        "keep_active_partition": c.keep_active_partition,
        "vote": c.last_vote.name if c.last_vote else None,
        "last_ack_nack": c.last_ack_nack.name if c.last_ack_nack else None,
    }


def _cluster(core: QnetdCore, cluster: Cluster) -> dict[str, Any]:
    first = cluster.clients[0]
    kap = all(
        c.algorithm is DecisionAlgorithm.FFSPLIT and c.keep_active_partition
        for c in cluster.clients
    )
    return {
        "name": cluster.name.decode("utf-8", "replace"),
        "algorithm": first.algorithm.name.lower(),
        "algorithm_text": ALGORITHM_TEXT[first.algorithm],
        "kap_tie_breaker": kap,
        "tie_breaker": tie_breaker_text(first.tie_breaker),
        "clients": [_client(core, c) for c in cluster.clients],
    }


def snapshot(core: QnetdCore, listen: str, connections: int) -> dict[str, Any]:
    """Everything `status` and `list` show, as JSON-ready data."""
    s = core.settings
    return {
        "listen": listen,
        "tls": TLS_TEXT[s.tls],
        "client_cert_required": s.client_cert_required,
        "connections": connections,
        "connected_clients": core.client_count(),
        "connected_clusters": len(core.clusters),
        "max_clients": s.max_clients,
        "max_send_size": s.max_send_size,
        "max_receive_size": s.max_receive_size,
        "clusters": [_cluster(core, c) for c in core.clusters.values()],
    }


def format_status(snap: dict[str, Any], verbose: bool) -> str:
    """`corosync-qnetd-tool -s [-v]` text."""
    tls = snap["tls"] + (" (client certificate required)" if snap["client_cert_required"] else "")
    lines = [
        f"QNetd address:\t\t\t{snap['listen']}",
        f"TLS:\t\t\t\t{tls}",
        f"Connected clients:\t\t{snap['connected_clients']}",
        f"Connected clusters:\t\t{snap['connected_clusters']}",
    ]
    if verbose:
        if snap["max_clients"]:
            lines.append(f"Maximum allowed clients:\t{snap['max_clients']}")
        sizes = f"{snap['max_send_size']}/{snap['max_receive_size']}"
        lines.append(f"Maximum send/receive size:\t{sizes} bytes")
    return "\n".join(lines) + "\n"


def _vote_text(c: dict[str, Any]) -> str:
    vote = VOTE_TEXT[c["vote"]]
    ack_nack = c["last_ack_nack"]
    return f"{vote} ({ack_nack})" if ack_nack else vote  # "ACK (ACK)" too, as 3.0.3 prints


def _client_lines(c: dict[str, Any], verbose: bool) -> list[str]:
    out = [f"    Node ID {c['node_id']}:", f"        Client address:\t\t{c['address']}"]
    if verbose:
        out.append(f"        HB interval:\t\t{c['heartbeat_interval_ms']}ms")
    if c["config_version"] is not None:
        out.append(f"        Configuration version:\t{c['config_version']}")
    if c["config_nodes"]:
        nodes = ", ".join(f"{n}" + (f" ({dc})" if dc else "") for n, dc in c["config_nodes"])
        out.append(f"        Configured node list:\t{nodes}")
    if verbose:
        out.append(f"        Ring ID:\t\t{c['ring_id']}")
    if c["membership"]:
        out.append(f"        Membership node list:\t{', '.join(map(str, c['membership']))}")
    if c["heuristics"] != "Undefined" or verbose:
        detail = f" (membership: {c['membership_heuristics']}, regular: {c['regular_heuristics']})"
        out.append(f"        Heuristics:\t\t{c['heuristics']}{detail if verbose else ''}")
    if verbose:
        verified = " (client certificate verified)" if c["certificate_verified"] else ""
        out.append(f"        TLS active:\t\t{'Yes' if c['tls_active'] else 'No'}{verified}")
    if c["vote"]:
        out.append(f"        Vote:\t\t\t{_vote_text(c)}")
    return out


def format_list(snap: dict[str, Any], verbose: bool, cluster: str | None = None) -> str:
    """`corosync-qnetd-tool -l [-v] [-c NAME]` text."""
    lines: list[str] = []
    for cl in snap["clusters"]:
        if cluster is not None and cl["name"] != cluster:
            continue
        kap = " (KAP Tie-breaker)" if cl["kap_tie_breaker"] else ""
        lines += [
            f'Cluster "{cl["name"]}":',
            f"    Algorithm:\t\t{cl['algorithm_text']}{kap}",
            f"    Tie-breaker:\t{cl['tie_breaker']}",
        ]
        for c in cl["clients"]:
            lines += _client_lines(c, verbose)
    return "\n".join(lines) + ("\n" if lines else "")
