"""Stage 2, extract: image files chosen (:mod:`image_files`), decoded and resized (:mod:`decode`, with
:mod:`resample`: torch's resize in numpy), batched for a torch model (:mod:`torch_batches`) or as uint8 pixels
(:mod:`pixel_batches`), and described into one HDF5 descriptor file, resumable and sharded under torchrun
(:mod:`extraction`).

Imports: :mod:`isc.core`, :mod:`isc.models`; torch only in :mod:`torch_batches` (and inside :mod:`decode`'s
torch twins), so that a model that takes uint8 pixels is extracted without it.
"""
