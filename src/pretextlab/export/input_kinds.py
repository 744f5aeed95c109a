"""How each task's backbone expects its input: the ``input.kind`` of an export's description.

One place for the mapping, read by export (to describe a run's backbone) and by
``pretextlab.evaluate`` (to prepare images the way pretraining did).
"""

from __future__ import annotations

#: Tasks whose backbone takes something other than normalised RGB.
INPUT_KINDS = {"colorization": "lab_l"}
#: The input kind of every task not in :data:`INPUT_KINDS`.
DEFAULT_INPUT_KIND = "rgb_normalized"
