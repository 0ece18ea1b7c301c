"""Stage 2, extract: image files chosen (:mod:`image_files`) and decoded (:mod:`decode`), batched for a
torch model (:mod:`torch_batches`) or as uint8 pixels (:mod:`pixel_batches`), and described into one HDF5
descriptor file, resumable and sharded under torchrun (:mod:`extraction`).

Imports: :mod:`isc.core`, :mod:`isc.models`.
"""
