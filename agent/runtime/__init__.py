"""Adapters of the agent: sockets, TLS, zeroconf, MQTT, files; the only agent code that does I/O."""
