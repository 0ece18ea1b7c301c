"""Stage 3b, verify: local features of an image and the geometric check of a pair
(:mod:`local_features`), candidate pairs of a predictions CSV verified and re-scored with an evidence sidecar
(:mod:`verification`), and the combination of scores fitted on self-made copies or ground truth
(:mod:`calibrate`).

Imports: :mod:`isc.core`, :mod:`isc.extract.decode` (the same image decoding), :mod:`isc.synth.edits` (the
copies it makes), OpenCV.
"""
