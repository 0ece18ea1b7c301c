"""Stage 3b, verify: local features of an image and the geometric check of a pair
(:mod:`local_features`), candidate pairs of a predictions CSV verified and re-scored with an evidence sidecar
(:mod:`verification`, its SIFT process pool in :mod:`workers`), verified deeper where the first candidates
show no evidence (:mod:`adaptive`), the matched regions of a verified pair cut and described by the search's model (:mod:`regions`), and the
combination of scores fitted on self-made copies or ground truth (:mod:`calibrate`).

Imports: :mod:`isc.core`, :mod:`isc.extract.decode` (the same image decoding), :mod:`isc.extract.extraction`
(the regions described as extraction describes images), :mod:`isc.models.base` (the model's type),
:mod:`isc.synth.edits` (the copies it makes), OpenCV.
"""
