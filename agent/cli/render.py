"""Text views of a `NodeStatus`: `status` (pvecm status), `nodes` (pvecm nodes), `explain`.

Pure functions (the date comes in), so golden files can pin them. They only read attributes, so
they print the core's `NodeStatus` and the CLI's record of it (agent/cli/status_reader.py) alike;
annotations only name `agent.status` (importing it costs ~12 ms per poll). The layout follows
corosync-quorumtool's printf rules (docs/agent.md, "votemesh status"): labels padded to column 19,
membership cells right-aligned in 10 columns plus one space, node ids `0x%08x ` in hex mode,
flags each followed by one space, `Quorum:` ending in two spaces when quorate.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~10 ms per CLI call
if TYPE_CHECKING:
    from agent.status import NodeStatus, PeerInfo

QDEVICE_NAME = "Qdevice"
PROVIDER = "votemesh_votequorum"
_FLAG_ORDER = (
    ("TwoNode", "2Node"),
    ("Quorate", "Quorate"),
    ("WaitForAll", "WaitForAll"),
    ("LastManStanding", "LastManStanding"),
    ("AutoTieBreaker", "AutoTieBreaker"),
    ("AllowDownscale", "AllowDownscale"),
    ("Qdevice", "Qdevice"),
)


def _cell(text: object) -> str:
    """A membership cell: right-aligned in 10 columns, then one space."""
    return f"{text!s:>10} "


def _node_id(node_id: int, hex_ids: bool) -> str:
    return f"0x{node_id:08x} " if hex_ids else _cell(node_id)


def _host(address: str) -> str:
    """`host:port` -> host (IPv6 `[h]:p` too)."""
    host = address.rsplit(":", 1)[0] if ":" in address else address
    return host.strip("[]")


def _address_key(address: str) -> tuple[int, tuple[int, ...], str]:
    parts = address.split(".")
    if len(parts) == 4 and all(p.isdigit() for p in parts):
        return (0, tuple(int(p) for p in parts), address)
    return (1, (), address)


class _Row:
    __slots__ = ("address", "local", "name", "node_id", "votes")

    def __init__(self, node_id: int, votes: int, address: str, name: str, local: bool) -> None:
        self.node_id, self.votes, self.address = node_id, votes, address
        self.name, self.local = name, local


def _rows(st: NodeStatus) -> list[_Row]:
    """The view's members, ordered by address like corosync (its default `-o a`)."""
    rows = []
    for member in st.members:
        if member == st.node_id:
            address = _host(st.addresses[0]) if st.addresses else ""
            rows.append(_Row(member, st.votes, address, st.node_name, True))
            continue
        peer = st.peer(member)
        address = _host(peer.addresses[0]) if peer and peer.addresses else ""
        rows.append(_Row(member, peer.votes if peer else 1, address, _name(peer), False))
    rows.sort(key=lambda r: (_address_key(r.address or f"~{r.node_id:010d}"), r.node_id))
    return rows


def _name(peer: PeerInfo | None) -> str:
    return peer.name if peer else ""


def _qdevice_cell(st: NodeStatus, row: _Row) -> str:
    """`A|NA,V|NV,MW|NMW` for this node's own device; `-` for a peer's (not carried in
    heartbeats yet, so this node does not know it)."""
    if not row.local:
        return "-"
    q = st.qdevice
    return f"{'A' if q.connected else 'NA'},{'V' if q.vote else 'NV'},NMW"


def membership_text(st: NodeStatus, hex_ids: bool, names: bool) -> str:
    """`Membership information` with its header, rows and the qdevice pseudo-row."""
    show_qdevice = st.qdevice.configured
    head = _cell("Nodeid") + _cell("Votes") + (_cell("Qdevice") if show_qdevice else "") + "Name"
    lines = ["", "Membership information", "----------------------", head]
    for row in _rows(st):
        shown = (row.name if names else row.address) or row.address or row.name or "?"
        line = _node_id(row.node_id, hex_ids) + _cell(row.votes)
        if show_qdevice:
            line += _cell(_qdevice_cell(st, row))
        lines.append(line + shown + (" (local)" if row.local else ""))
    if show_qdevice:
        q = st.qdevice
        line = _node_id(0, hex_ids) + _cell(q.votes if q.vote else 0) + " " * 11 + QDEVICE_NAME
        lines.append(line if q.vote else f"{line} (votes {q.votes})")
    return "\n".join(lines) + "\n"


def flags_text(flags: tuple[str, ...]) -> str:
    """corosync's flag words in its fixed order, each followed by one space."""
    have = set(flags)
    return "".join(f"{word} " for name, word in _FLAG_ORDER if name in have)


def status_text(st: NodeStatus, date: str, hex_ids: bool = True) -> str:
    """`votemesh status`: pvecm's header, then corosync-quorumtool -s (-i -H by default).

    `date` is ctime()'s text without its newline."""
    version = -1 if st.config_version is None else st.config_version
    label = "{:<17} {}".format
    lines = [
        "Cluster information",
        "-------------------",
        label("Name:", st.cluster),
        label("Config Version:", version),
        label("Transport:", st.transport),
        label("Secure auth:", "on" if st.secure_auth else "off"),
        "",
        "Quorum information",
        "------------------",
        f"Date:             {date}",
        f"Quorum provider:  {PROVIDER}",
        f"Nodes:            {len(st.members)}",
        f"Node ID:          0x{st.node_id:08x}" if hex_ids else f"Node ID:          {st.node_id}",
        f"Ring ID:          {st.ring}",
        f"Quorate:          {'Yes' if st.quorate else 'No'}",
        "",
        "Votequorum information",
        "----------------------",
        f"Expected votes:   {st.expected_votes}",
        f"Highest expected: {st.highest_expected}",
        f"Total votes:      {st.total_votes}",
        f"Quorum:           {st.quorum} {' ' if st.quorate else 'Activity blocked'}",
        f"Flags:            {flags_text(st.flags)}",
    ]
    return "\n".join(lines) + "\n" + membership_text(st, hex_ids, names=False)


def nodes_text(st: NodeStatus) -> str:
    """`votemesh nodes`: corosync-quorumtool -l (decimal ids, node names)."""
    return membership_text(st, hex_ids=False, names=True)


def _secs(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"


def explain_text(st: NodeStatus) -> str:
    """`votemesh explain`: the verdict, the rule that decided, the votes counted, who is
    missing and since when, and the last transitions."""
    who = f"node {st.node_id}" + (f" ({st.node_name})" if st.node_name else "")
    verdict = "quorate" if st.quorate else "NOT quorate"
    lines = [f"{who} is {verdict} in ring {st.ring}", f"Rule:      {st.why}"]
    lines.append(
        f"Basis:     {st.basis}: {st.basis_why}" if st.basis_why else f"Basis:     {st.basis}"
    )
    counted = [f"node {st.node_id}: {st.votes} (local)"] if st.node_id in st.counted else []
    for member in st.counted:
        if member != st.node_id:
            peer = st.peer(member)
            counted.append(f"node {member}: {peer.votes if peer else 1}")
    q = st.qdevice
    if q.configured:
        state = "voting" if q.vote else "connected, not voting" if q.connected else "not connected"
        counted.append(f"qdevice: {q.votes if q.vote else 0} ({state}; {q.server})")
    lines.append(f"Counted:   {', '.join(counted)}")
    uncounted = [m for m in st.members if m not in st.counted]
    if uncounted:
        nodes = ", ".join(f"node {m}" for m in uncounted)
        lines.append(f"Uncounted: {nodes} (in the view, not counted: {st.basis})")
    lines.append(
        f"Totals:    {st.total_votes} of {st.expected_votes} expected votes (highest expected "
        f"{st.highest_expected}), quorum {st.quorum}; flags {flags_text(st.flags).strip() or '-'}"
    )
    if st.views != "forming":
        lines.append(f"Views:     {st.views}")
    missing = [p for p in st.peers if not p.member]
    if not missing:
        lines.append("Missing:   nobody")
    for i, p in enumerate(missing):
        name = f" ({p.name})" if p.name else ""
        since = (
            f"out of the view for {_secs(p.missing_since_s)}"
            if p.missing_since_s is not None
            else "not in a view with this node since it started"
        )
        heard = f"last heartbeat {_secs(p.last_heartbeat_s)}"
        heard += " ago" if p.last_heartbeat_s is not None else ""
        lead = "Missing:   " if i == 0 else " " * 11
        lines.append(f"{lead}node {p.node_id}{name}, {p.votes} vote(s): {since}; {heard}")
    lines.append("Last transitions (oldest first):")
    if not st.transitions:
        lines.append("  none recorded")
    lines.extend(
        f"  {t.at_s:8.1f} s ago  {t.kind:<22} ring {t.ring:<8} "
        f"{'quorate' if t.quorate else 'not quorate':<11}  {t.reason}"
        for t in st.transitions
    )
    return "\n".join(lines) + "\n"
