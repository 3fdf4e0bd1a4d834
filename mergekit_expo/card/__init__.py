"""Model cards for ExPO outputs: Hub metadata (lineage, tags), the formula, α, the α search.

``write_card`` is the one way a card gets into an output folder; ``mergekit-expo card``
(see ``command``) rewrites the card of an existing output.
"""

from mergekit_expo.card.writer import card_files, check_card_inputs, write_card

__all__ = ["card_files", "check_card_inputs", "write_card"]
