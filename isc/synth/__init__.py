"""Synthetic data: drawing primitives (:mod:`draw`), procedural and photo-based base images (:mod:`photos`),
DISC21-style edits (:mod:`edits`), and the mini dataset in the competition's layout (:mod:`dataset`).

Imports: :mod:`isc.core`, Pillow, numpy.
"""
