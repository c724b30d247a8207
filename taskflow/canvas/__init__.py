"""Canvas: compose tasks into groups, chains and chords (API.md section 5).

``group(...)`` runs signatures in parallel, ``chain(...)`` (or ``a | b``) one after another
with each step receiving the previous result, ``chord(header, body)`` runs ``body`` once with
the header's results. Canvas state travels in the envelope; the worker advances it through
:func:`taskflow.canvas.advance.advance_step`, and group/chain records live in the result
store (see ``docs/canvas.md``).
"""

from .primitives import Canvas, chain, chord, group
from .results import ChainResult, ChordResult, GroupResult

__all__ = ["Canvas", "ChainResult", "ChordResult", "GroupResult", "chain", "chord", "group"]
