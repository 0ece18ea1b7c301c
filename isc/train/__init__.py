"""Training a descriptor model on edited copies of the training images: the copies and their batches
(:mod:`training_data`), the loop with its checkpoints and evaluation (:mod:`training`).

Imports: :mod:`isc.core`, :mod:`isc.models`, :mod:`isc.extract`, :mod:`isc.search.matching` and
:mod:`isc.evaluate.metrics` (the evaluation during training), :mod:`isc.synth.edits` (the copies it learns from).
"""
