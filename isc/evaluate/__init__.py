"""Stage 4, evaluate: µAP and recall at 90% precision as the organisers compute them (:mod:`metrics`),
precision-recall plots and score histograms (:mod:`plots`) and the HTML report (:mod:`report`), made of the
pair tables (:mod:`pairs`), thumbnails (:mod:`thumbnails`), match pictures (:mod:`match_pictures`) and HTML
(:mod:`html_pages`); isc-find's page (:mod:`matches_page`).

Imports: :mod:`isc.core`, :mod:`isc.search.capped_search` (the descriptor track's capped search),
:mod:`isc.verify.local_features` (the report's keypoint drawings), matplotlib.
"""
