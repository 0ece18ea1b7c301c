"""Training a descriptor model on edited copies of the training images: the copies and their batches
(:mod:`training_data`), the objective and schedule (:mod:`objective`), the loop with its checkpoints
(:mod:`training`) and its evaluation through the stages' functions (:mod:`evaluation`).

Imports: :mod:`isc.core`, :mod:`isc.models`, :mod:`isc.extract`, :mod:`isc.evaluate`, :mod:`isc.synth.edits`.
"""
