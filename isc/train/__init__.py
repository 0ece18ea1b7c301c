"""Training a descriptor model on edited copies of the training images: the copies and their batches
(:mod:`training_data`), the objective and schedule (:mod:`objective`), the loop with its checkpoints
(:mod:`training`) and its evaluation through the stages' functions (:mod:`evaluation`).

Imports: :mod:`isc.core`, :mod:`isc.models`, :mod:`isc.extract`, :mod:`isc.search.matching` and
:mod:`isc.evaluate.metrics` (the evaluation during training), :mod:`isc.synth.edits` (the copies it learns from).
"""
