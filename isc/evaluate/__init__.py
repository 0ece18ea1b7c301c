"""Stage 4, evaluate: µAP and recall at 90% precision as the organisers compute them (:mod:`metrics`),
precision-recall plots (:mod:`plots`) and the HTML report (:mod:`report`).

Imports: :mod:`isc.core`, :mod:`isc.search.capped_search` (the descriptor track's capped search),
:mod:`isc.verify.local_features` (the report's keypoint drawings), matplotlib.
"""
