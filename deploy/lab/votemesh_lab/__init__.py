"""votemesh-lab: a votemesh (or corosync) cluster in network namespaces, faults with netem's
vocabulary through a userspace switch, scenario files, and one checker over one timeline.

Core modules (no processes, sockets or clocks): `checker`, `sim/`. Adapters: `netns` (hosts),
`switch` (the TAP switch), `agents`, `qnetd`, `corosync` (daemons in hosts), `demo`,
`demo_corosync`, `cli` (the `votemesh-lab` command). docs/design.md §4 is the plan; docs/lab.md
the manual.
"""
