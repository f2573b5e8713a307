"""The `votemesh-lab status` table from the supervisor's status reply (rich renders it).

One row per host: node, daemon (running, paused, down), ring id, members, quorate, votes
(total/expected), qdevice (vote (n), no vote, not connected, -) and per lab network
`L<k> up/peers`; then the qnetd's votes, the whole requested network and the last change.
"""

from __future__ import annotations

from typing import Any


def _links(doc: dict[str, Any]) -> str:
    up: dict[int, list[int]] = {}
    for peer in doc.get("peers", ()):
        for link in peer.get("links", ()):
            counts = up.setdefault(int(link.get("link", 0)), [0, 0])
            counts[0] += 1 if link.get("up") else 0
            counts[1] += 1
    return " ".join(f"L{k} {u}/{n}" for k, (u, n) in sorted(up.items())) or "-"


def _qdevice(doc: dict[str, Any]) -> str:
    qdevice = doc.get("qdevice") or {}
    if not qdevice.get("configured"):
        return "-"
    if qdevice.get("vote"):
        return f"vote ({qdevice.get('votes')})"
    return "no vote" if qdevice.get("connected") else "not connected"


def status_rows(reply: dict[str, Any]) -> list[list[str]]:
    """One row per host: node, daemon, ring, members, quorate, votes, qdevice, links."""
    rows = []
    for node in reply.get("nodes", ()):
        doc = node.get("status") or {}
        if node.get("role") != "agent" or not doc:
            rows.append([node["host"], node["daemon"], *["-"] * 6])
            continue
        members = ",".join(str(m) for m in doc.get("members", ()))
        rows.append([
            node["host"], node["daemon"], str(doc.get("ring", "-")), members,
            "yes" if doc.get("quorate") else "NO",
            f"{doc.get('total_votes')}/{doc.get('expected_votes')}", _qdevice(doc), _links(doc),
        ])  # fmt: skip
    return rows


HEADERS = ["node", "daemon", "ring", "members", "quorate", "votes", "qdevice", "links"]


def _qnetd_line(reply: dict[str, Any]) -> str:
    votes = reply.get("qnetd")
    if votes is None:
        return ""
    shown = " ".join(f"n{n}={v}" for n, v in votes.items()) or "(no clients yet)"
    return f"qnetd votes: {shown}"


def render(reply: dict[str, Any]) -> Any:
    """The status table as a rich renderable (a Group of the table and the footer lines)."""
    from rich.console import Group  # noqa: PLC0415 (only status draws)
    from rich.table import Table  # noqa: PLC0415
    from rich.text import Text  # noqa: PLC0415

    table = Table(title=f"lab {reply.get('lab')}", title_justify="left", box=None)
    for header in HEADERS:
        table.add_column(header)
    for row in status_rows(reply):
        style = "red" if row[4] == "NO" or row[1] != "running" else None
        table.add_row(*row, style=style)
    lines = (_qnetd_line(reply), f"network {reply.get('matrix_text')}",
             f"last change: {reply.get('network')}")  # fmt: skip
    footer = [line for line in lines if line]
    return Group(table, *(Text(line) for line in footer))
