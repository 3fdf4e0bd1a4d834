"""Selection strategies: what the search scores next (see :mod:`.base`)."""
