"""Other libraries' internals, one module per library, each beside the check of the
versions it works with; elsewhere the package uses their public API only
(``tests/test_layout.py``). :mod:`.extras` names the extra a missing library comes with."""
