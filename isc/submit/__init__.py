"""Stage 5, submit: the competition's rules for a submission, shared (:mod:`violations`), for the matching
track (:mod:`matching`) and for the descriptor track (:mod:`descriptors`), and the manifest that records how a
submission was made (:mod:`manifest`).

Imports: :mod:`isc.core`.
"""
