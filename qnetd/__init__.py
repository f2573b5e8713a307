"""votemesh qnetd: the standalone tie-breaking arbitrator (coming with issue 3)."""
