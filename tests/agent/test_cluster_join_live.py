"""`votemesh create`, `join-info`, `add` end to end: real agents in network namespaces.

Three lab hosts (bridge, per-run random namespace names, everything removed after the test):
`create` on n1 and its agent started; `join-info` on n1 + `add` on n2 and n3 and their agents
started -> `votemesh status` on every node shows 3 members, Quorate, Config Version 3. Then the
user mistakes of design §3.11 from a fourth host, each one line and exit 1 with nothing
changed anywhere, and 1,000 wrong tokens (rate-limited, counted, a few log lines).
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from votemesh_lab import netns
from votemesh_lab.netns import Host, LabFactory, NotYetError, TrackedProcess

from proto.join import JoinString, make_token
from proto.runtime.control_client import request

BIN = Path(sys.executable).parent
SETTLE = 30.0


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root: network and mount namespaces"
    return netns.missing_reason()


pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(_missing() is not None, reason=str(_missing())),
]


@dataclass
class Node:
    """One lab host's votemesh files (host side) and agent."""

    host: Host
    work: Path
    agent: TrackedProcess | None = None

    @property
    def dirs(self) -> list[str]:
        return [
            "--config-dir", str(self.work / "etc"), "--state-dir", str(self.work / "state"),
            "--control-socket", str(self.work / "agent.sock"),
        ]  # fmt: skip

    @property
    def socket(self) -> Path:
        return self.work / "agent.sock"

    def votemesh(self, *args: str, check: bool = True) -> tuple[int, str, str]:
        result = self.host.run([str(BIN / "votemesh"), *args], check=check, timeout=90)
        return result.returncode, result.stdout, result.stderr

    def start(self) -> None:
        args = [str(BIN / "votemesh-agent"), "--config", str(self.work / "etc" / "node.toml")]
        self.agent = self.host.start(args, label="agent")

    def status(self) -> dict[str, Any]:
        assert self.agent is not None
        assert self.agent.alive(), f"{self.host.name} agent exited:\n{self.agent.log_tail()}"
        try:
            ok, body = request(self.socket, "status", 5.0)
        except OSError as exc:
            raise NotYetError(f"{self.host.name}: control socket: {exc}") from None
        return dict(json.loads(body)) if ok else {}

    def join_info(self) -> str:
        code, out, err = self.votemesh("join-info", "--socket", str(self.socket))
        assert code == 0, err
        return out.strip()

    def add(self, js: str, *extra: str, name: str | None = None) -> tuple[int, str, str]:
        args = ["add", js, "--name", name or self.host.name, *self.dirs]
        if "--link0" not in extra:
            args += ["--link0", self.host.address]
        return self.votemesh(*args, *extra, check=False)


def _quorate(nodes: list[Node], version: int) -> None:
    """Every node of `nodes` sees all of them, quorate, at configuration `version`."""

    def probe() -> bool | None:
        for node in nodes:
            st = node.status()
            members = list(st.get("members", []))
            now = (len(members), st.get("quorate"), st.get("config_version"))
            if now != (len(nodes), True, version):
                raise NotYetError(
                    f"{node.host.name}: members {members}, quorate {st.get('quorate')}, "
                    f"config_version {st.get('config_version')}"
                )
        return True

    what = f"{len(nodes)} members, quorate, version {version}"
    netns.wait_until(probe, timeout=SETTLE, what=what)


def test_create_join_info_add_three_nodes_then_every_mistake_changes_nothing(
    lab_factory: LabFactory, tmp_path: Path
) -> None:
    """The whole flow on real processes, then each bad input is one line and exit 1, with no
    file written on the joiner and configuration version 3 kept on every member."""
    lab = lab_factory(["n1", "n2", "n3", "n4"])
    nodes = [Node(lab[f"n{i}"], tmp_path / f"n{i}") for i in (1, 2, 3, 4)]
    n1, n2, n3, n4 = nodes
    code, out, err = n1.votemesh("create", "labjoin", "--name", "n1", "--link0",
                                 n1.host.address, *n1.dirs)  # fmt: skip
    assert code == 0, err
    assert "votemesh-agent --config" in out
    n1.start()
    netns.wait_until(lambda: n1.status() or None, timeout=SETTLE, what="n1's agent")
    first = n1.join_info()
    for count, node in ((2, n2), (3, n3)):
        code, out, err = node.add(first if node is n2 else n1.join_info())
        assert code == 0, err
        assert "joined cluster 'labjoin'" in out
        node.start()
        # the next change needs a majority of this version's nodes in the view (design 3.9)
        _quorate(nodes[:count], count)
    _quorate(nodes[:3], 3)
    for node in nodes[:3]:
        code, out, _ = node.votemesh("status", "--socket", str(node.socket))
        assert code == 0
        assert "Config Version:   3" in out
        assert "Quorate:          Yes" in out
        assert "Nodes:            3" in out

    # -- mistakes: one line each, exit 1, nothing written, nothing changed
    pinned = JoinString.parse(n1.join_info())
    token_file = n1.work / "state" / "join-tokens.json"
    expired = JoinString.parse(n1.join_info())
    records = json.loads(token_file.read_text())
    for record in records["tokens"]:  # the last token minted expires now
        if record is records["tokens"][-1]:
            record["expires_at"] = record["created_at"]
    token_file.write_text(json.dumps(records))
    cases = [
        (n4.add(first), "join token already used"),
        (n4.add(replace(pinned, token=make_token(b"z" * 32)).encode()), "unknown join token"),
        (n4.add(expired.encode()), "join token expired"),
        (n4.add(replace(pinned, ca_sha256=bytes(32)).encode()), "does not match the join string"),
        (n2.add(pinned.encode()), "this node already belongs to a cluster"),
        (n4.add(pinned.encode(), "--link0", n2.host.address), f"address {n2.host.address} already"),
        (n4.add(pinned.encode(), name="n3"), "node name 'n3' is already in cluster 'labjoin'"),
        (n4.add(pinned.encode(), "--nodeid", "2"), "node id 2 is already used by node 'n2'"),
        (n4.add(pinned.encode()[:-9]), "not a join string"),
    ]
    for (code, _out, err), says in cases:
        lines = err.strip().splitlines()
        assert code == 1, err
        assert lines[-1].startswith("votemesh: "), err
        assert says in lines[-1], err
        assert "Traceback" not in err
    assert not (n4.work / "etc" / "node.toml").exists()
    assert not (n4.work / "state").exists()
    _quorate(nodes[:3], 3)

    # -- 1,000 wrong tokens from n4: ten looked at, the rest rate-limited, a few log lines
    script = textwrap.dedent(f"""
        import collections, json, sys
        from agent.runtime import join_client, join_files
        from proto.join import JoinString, make_token
        from dataclasses import replace
        js = JoinString.parse(sys.argv[1])
        key = join_files.new_key()
        seen = collections.Counter()
        for i in range(1000):
            forged = replace(js, token=make_token(i.to_bytes(16, "big")))
            try:
                join_client.join(forged, "n4", ((0, "{n4.host.address}", 0),), node_id=None,
                                 votes=None, force=False, node_key=key)
            except join_client.JoinError as exc:
                seen[str(exc).split("(", 2)[1].split(")")[0]] += 1
        print(json.dumps(dict(seen)))
    """)
    result = n4.host.run([sys.executable, "-c", script, pinned.encode()], timeout=300)
    seen = json.loads(result.stdout)
    # n4 spent 3 guesses above (used, unknown, expired); the bucket refills 1 per 10 s
    assert set(seen) == {"unknown_token", "rate_limited"}, seen
    assert seen["unknown_token"] <= 10, seen
    assert seen["rate_limited"] >= 985, seen
    ok, body = request(n1.socket, "join-stats", 5.0)
    assert ok
    stats = json.loads(body)
    assert stats["refused"]["rate_limited"] == seen["rate_limited"]
    assert stats["admitted"] == 2
    assert n1.agent is not None
    refused_lines = [
        line for line in n1.agent.log_path.read_text().splitlines() if '"join refused"' in line
    ]
    assert 1 <= len(refused_lines) <= 12, refused_lines  # per reason and source every 10 s
    _quorate(nodes[:3], 3)


def _picture(nodes: list[Node], want: dict[str, tuple[bool, bool]], what: str) -> None:
    """Wait until each named node's (quorate, qdevice vote) is as wanted."""

    def probe() -> bool | None:
        for node in nodes:
            st = node.status()
            now = (st.get("quorate"), st.get("qdevice", {}).get("vote"))
            if now != want[node.host.name]:
                raise NotYetError(f"{node.host.name}: quorate, qdevice vote = {now}")
        return True

    netns.wait_until(probe, timeout=SETTLE, what=what)


def test_qdevice_setup_reaches_every_node_and_breaks_a_1_1_split(
    lab_factory: LabFactory, tmp_path: Path
) -> None:
    """Two nodes made with create/add; `qdevice setup` with a votemesh-qnetd token on n1 puts
    the device and its credentials into the configuration (version 3 on both, no file copied
    by hand); without a restart both count the device (expected 3), and a 1|1 split keeps the
    tie-breaker (lowest id, n1) quorate and n2 not. A 3-node ffsplit setup would be refused
    (unit test); `qdevice remove` makes version 4 everywhere."""
    lab = lab_factory(["qnetd", "n1", "n2"])
    n1, n2 = Node(lab["n1"], tmp_path / "n1"), Node(lab["n2"], tmp_path / "n2")
    qhost, qdir = lab["qnetd"], tmp_path / "qnetd"
    qnetd = [str(BIN / "votemesh-qnetd")]
    qhost.start([*qnetd, "run", "--state-dir", str(qdir), "--listen", qhost.address,
                 "--enroll-listen", f"{qhost.address}:5404",
                 "--control-socket", str(tmp_path / "qnetd.sock")], label="qnetd")  # fmt: skip
    code, _out, err = n1.votemesh("create", "qdjoin", "--name", "n1", "--link0",
                                  n1.host.address, *n1.dirs)  # fmt: skip
    assert code == 0, err
    n1.start()
    netns.wait_until(lambda: n1.status() or None, timeout=SETTLE, what="n1's agent")
    code, _out, err = n2.add(n1.join_info())
    assert code == 0, err
    n2.start()
    _quorate([n1, n2], 2)

    def token() -> str | None:
        result = qhost.run([*qnetd, "token", "create", "--cluster", "qdjoin",
                            "--state-dir", str(qdir)], check=False)  # fmt: skip
        return result.stdout.strip() or None  # the CA appears once `run` started

    code, out, err = n1.votemesh(
        "qdevice", "setup", qhost.address, "--token",
        netns.wait_until(token, timeout=SETTLE, what="a qnetd token"),
        "--socket", str(n1.socket), check=False,
    )  # fmt: skip
    assert code == 0, err
    assert "every node starts its qdevice client" in out
    _quorate([n1, n2], 3)
    # no restart: the running agents apply the device settings (core Reconfigure)
    _picture([n1, n2], {"n1": (True, True), "n2": (True, True)}, "both nodes count the device")
    assert n1.status()["expected_votes"] == 3
    lab.partition([n1.host], [n2.host])
    _picture([n1, n2], {"n1": (True, True), "n2": (False, False)}, "n1 keeps quorum with qdevice")
    lab.heal()
    _picture([n1, n2], {"n1": (True, True), "n2": (True, True)}, "healed")
    code, out, err = n2.votemesh("qdevice", "remove", "--socket", str(n2.socket), check=False)
    assert code == 0, err
    _quorate([n1, n2], 4)
