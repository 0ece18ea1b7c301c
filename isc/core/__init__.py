"""The core every stage shares: ids, phases, the data layout and the regional buckets (:mod:`competition`),
a broken image and transparency over white (:mod:`images`), files written atomically and checked
(:mod:`files`), the descriptor HDF5 format and the same-model rule (:mod:`descriptors`), the CSV formats
(:mod:`tables`), the per-rank partial log (:mod:`partial_log`), the record of what made a derived file
(:mod:`made_from`), how worker processes start (:mod:`processes`: a forkserver, never a fork of a threaded
process), threads and torchrun ranks, scored pairs as plain arrays (:mod:`pairs`) and progress bars
(:mod:`progress`).

Imports: the standard library, numpy, pandas, h5py, Pillow (in :mod:`images`); tqdm only in :mod:`progress`, for
a bar that shows; torch only in :mod:`distributed`, inside the functions that need a GPU or a process group.
Never a stage.
"""
