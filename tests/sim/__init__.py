"""Tests of the simulator and the checker (votemesh_lab.sim, .checker) and the fake node."""
