"""votemesh agent: per-node membership, votequorum and qdevice client (coming with issue 4)."""
