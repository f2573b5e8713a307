"""votemesh wire formats: bytes in, typed messages out, and back.

This package owns the qnetd wire protocol (byte-compatible with corosync-qnetd 3.0.x) and the
sealed agent-to-agent datagrams. It must not read a clock, open a socket or log.
"""
