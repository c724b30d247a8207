"""Canvas: compose tasks into groups, chains and chords (API.md section 5).

``group(...)`` runs signatures in parallel, ``chain(...)`` (or ``a | b``) one after another
with each step receiving the previous result, ``chord(header, body)`` runs ``body`` once with
the header's results. Canvas state travels in the envelope; the worker advances it through
the :class:`~taskflow.canvas.advance.CanvasContinuation` that ``App`` registers on its kernel,
and group/chain records live in the result store (see ``docs/canvas.md``).
"""

from .advance import CanvasContinuation
from .results import ChainResult, ChordResult, GroupResult, chain_result, group_result
from .signature import Canvas, HasKernel, Signature, chain, chord, group, send_signatures

__all__ = [
    "Canvas",
    "CanvasContinuation",
    "ChainResult",
    "ChordResult",
    "GroupResult",
    "HasKernel",
    "Signature",
    "chain",
    "chain_result",
    "chord",
    "group",
    "group_result",
    "send_signatures",
]
