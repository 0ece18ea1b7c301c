"""Stage 2, extract: image files chosen (:mod:`image_files`), decoded and resized (:mod:`decode`, with
:mod:`resample`: torch's resize in numpy), batched for a torch model (:mod:`torch_batches`: the Pillow
DataLoader, or the ``torchvision`` decoder's nvJPEG batches of :mod:`nvjpeg_batches`, read and decoded in
this process or in worker processes, :mod:`decode_workers`) or as uint8 pixels (:mod:`pixel_batches`), each
reading the run's options resolved once (:mod:`plan`), and described into one HDF5 descriptor file, resumable and sharded under torchrun (:mod:`extraction`).

Imports: :mod:`isc.core`, :mod:`isc.models`; torch only in :mod:`torch_batches`, :mod:`nvjpeg_batches`,
:mod:`decode_workers` (and inside :mod:`decode`'s torch twins), so that a model that takes uint8 pixels is
extracted without it.
"""
