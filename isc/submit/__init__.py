"""Stage 5, submit: the competition's rules for a submission, shared (:mod:`violations`), for the matching
track (:mod:`matching`) and for the descriptor track (:mod:`descriptors`), the manifest that records how a
submission was made (:mod:`manifest`), and a submission scored locally, the score recorded in its manifest
(:mod:`scoring`).

Imports: :mod:`isc.core`, :mod:`isc.evaluate.metrics` (the scoring).
"""
