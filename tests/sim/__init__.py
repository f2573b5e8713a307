"""Seeded discrete-event simulator for agent cores, and the checker of DESIGN §3's properties.

`network` drives many `AgentNode` cores over a simulated network with faults; `checker` verifies
S1, S2, S3, L1 and L2 on what the nodes reported; `schedules` turns a seed into a fault
schedule; `replay` and `soak` are the command lines. Simulated time only: no sleeps, no clock.
"""
