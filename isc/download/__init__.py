"""Stage 1, download: the competition's S3 buckets (:mod:`s3`), a split synchronised and MD5-checked
(:mod:`sync`), the verified-files journal (:mod:`local_copy`), and a local S3 server for the mini dataset
(:mod:`s3server`).

Imports: :mod:`isc.core`, boto3.
"""
