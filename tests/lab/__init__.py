"""Namespace lab: real processes in network namespaces on a private bridge, for system tests."""
