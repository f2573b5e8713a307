"""`votemesh status`, `nodes`, `explain`: read the agent's status and print it.

Exit status like `corosync-quorumtool -s`: 0 quorate, 2 not quorate (`status`, `explain`),
1 an error (raised as UserError / StatusError and printed by `agent.cli.main`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from agent.cli.client import fetch_status
from agent.cli.render import explain_text, nodes_text, status_text

EXIT_OK, EXIT_NOT_QUORATE = 0, 2


def cmd_status(args: argparse.Namespace) -> int:
    """pvecm status layout, or the schema-1 document with --json."""
    st, doc = fetch_status(args)
    if args.json:
        sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    else:
        sys.stdout.write(status_text(st, time.ctime(), hex_ids=not args.decimal))
    return EXIT_OK if st.quorate else EXIT_NOT_QUORATE


def cmd_nodes(args: argparse.Namespace) -> int:
    """pvecm nodes layout (exit 0 whenever the agent answered, like corosync-quorumtool -l)."""
    st, _ = fetch_status(args)
    sys.stdout.write(nodes_text(st))
    return EXIT_OK


def cmd_explain(args: argparse.Namespace) -> int:
    """Why this node is or is not quorate."""
    st, _ = fetch_status(args)
    sys.stdout.write(explain_text(st))
    return EXIT_OK if st.quorate else EXIT_NOT_QUORATE
