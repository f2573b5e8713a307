"""Seeded discrete-event simulator for agent cores.

`network` drives many `AgentNode` cores over a simulated network with faults; the checker
(`votemesh_lab.checker`) verifies S1, S2, S3, L1 and L2 on what the nodes reported; `schedules`
turns a seed into a fault schedule; `replay` and `soak` are the command lines. Simulated time
only: no sleeps, no clock.
"""
