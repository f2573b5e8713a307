"""Adapters shared by the agent and the qnetd (blocking I/O; kept cheap to import)."""
