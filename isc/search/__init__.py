"""Stage 3, search: descriptor arrays checked (:mod:`vectors`), k-nearest-neighbour backends (:mod:`knn`),
score normalisation (:mod:`normalisation`), negative embeddings (:mod:`negatives`), PCA whitening
(:mod:`pca`), the search of descriptor files into a predictions CSV (:mod:`matching`), the descriptor track's
capped search as the organisers ran it (:mod:`capped_search`), the kNN-graph export (:mod:`knn_graph`), and
the descriptor track's levers: neighbour expansion (:mod:`expansion`), view pooling (:mod:`pooling`), several
models joined before the PCA (:mod:`ensemble`) and the track's vectors (:mod:`descriptor_track`).

Imports: :mod:`isc.core`, faiss (or torch for the GPU backend).
"""
