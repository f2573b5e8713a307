"""Decision algorithms of the arbitrator, one module each, behind `qnetd.model.Algorithm`."""
