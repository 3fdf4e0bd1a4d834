"""The α search (``mergekit-expo search``): the paper's way of choosing α. Engines and
scorers are found by name (:mod:`.engine`, :mod:`.scoring`); :mod:`.command` runs it."""
