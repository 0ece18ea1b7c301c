"""Local features of one image and the geometric check of one pair.

- :class:`VerifyOptions`: how features are made and matched, checked once.
- :func:`describe_image` / :func:`match_features`: one image's OpenCV SIFT features, one pair's evidence
  (ratio-test matches, a model fitted by RANSAC or MAGSAC, its inliers); the report draws them.
- :class:`FeatureCache`: each image's features in one ``.npz`` under ``CACHE/<features tag>/<2 hex>/``,
  keyed by id, file stamp and options, written atomically, reused by later runs.

Keypoints are stored in the frame of the resized grey image (long side at most ``max_side``) with the
factor back to the decoded image's pixels; the fitted transform maps query pixels to reference pixels of the
decoded (EXIF-rotated) images.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from isc.core.files import SettingError, atomic_path
from isc.core.images import BrokenImage, broken_reason
from isc.extract.decode import DEFAULT_MAX_PIXELS, decode_pixels

GEOMETRIES = ("affine", "homography", "magsac")
# how SIFT descriptors are compared: as OpenCV makes them, or as RootSIFT (L1-normalised, square-rooted: the
# Hellinger kernel, Arandjelović & Zisserman 2012); the same cached features serve both
LOCAL_FEATURES = ("sift", "rootsift")
FEATURES_VERSION = 1  # bump when the features of the same options change: old cache entries are then ignored
MAX_AREA_CHANGE = 64.0  # a fitted model scaling areas more (or less) than this is degenerate: no model


@dataclass(frozen=True)
class VerifyOptions:
    """How candidate pairs are verified; checked once, here (a :class:`SettingError` names the field).

    ``k``: candidates checked per query (by decreasing score); ``max_features``: SIFT keypoints per image;
    ``max_side``: the long side the grey image is shrunk to before SIFT; ``ratio``: Lowe's ratio test;
    ``geometry``: ``affine`` (rotation, uniform scale, translation: cv2.estimateAffinePartial2D),
    ``homography`` (cv2.findHomography, RANSAC) or ``magsac`` (homography by USAC MAGSAC++);
    ``threshold``: RANSAC reprojection error in pixels of the resized images; ``workers``: processes
    (0: this process; None: every core, shared by the ranks of a machine under torchrun);
    ``deep_k``: candidates verified for a query whose first ``k`` all show fewer than ``deep_inliers``
    inliers (adaptive depth, :mod:`isc.verify.adaptive`; None: ``k`` for every query).
    ``region_inliers``: pairs with at least this many inliers also get their matched regions described by the
    descriptor model (:mod:`isc.verify.regions`; 0: none). ``features``: one of :data:`LOCAL_FEATURES`.
    ``mirror``: each pair is also matched with the query mirrored left-right, and the match with more inliers kept
    (SIFT is not mirror-invariant; a flipped copy otherwise shows few inliers).
    """

    k: int = 10
    max_features: int = 1000
    max_side: int = 512
    ratio: float = 0.8
    geometry: str = "affine"
    threshold: float = 8.0
    workers: int | None = None
    deep_k: int | None = None
    deep_inliers: int = 8
    region_inliers: int = 0
    features: str = "sift"
    mirror: bool = False

    def __post_init__(self) -> None:
        if self.k < 1:
            raise SettingError("k", f"must be at least 1, got {self.k}")
        if self.max_features < 2:
            raise SettingError("max_features", f"must be at least 2, got {self.max_features}")
        if self.max_side < 16:
            raise SettingError("max_side", f"must be at least 16 pixels, got {self.max_side}")
        if not 0 < self.ratio <= 1:
            raise SettingError("ratio", f"must be within (0, 1] (Lowe's ratio test), got {self.ratio}")
        if self.geometry not in GEOMETRIES:
            raise SettingError("geometry", f"must be one of {', '.join(GEOMETRIES)}, got {self.geometry!r}")
        if not 0 < self.threshold < float("inf"):
            raise SettingError("threshold", f"must be a finite number of pixels > 0, got {self.threshold}")
        if self.workers is not None and self.workers < 0:
            raise SettingError("workers", f"must be 0 or more, got {self.workers}")
        if self.deep_k is not None and self.deep_k <= self.k:
            raise SettingError("deep_k", f"must be more than the candidates verified for every query ({self.k}), "
                               f"got {self.deep_k}")
        if self.deep_inliers < 1:
            raise SettingError("deep_inliers", f"must be at least 1, got {self.deep_inliers}")
        if self.features not in LOCAL_FEATURES:
            raise SettingError("features", f"must be one of {', '.join(LOCAL_FEATURES)}, got {self.features!r}")
        if self.region_inliers < 0:
            raise SettingError("region_inliers", f"must be 0 (no region evidence) or more, got {self.region_inliers}")

    @property
    def features_tag(self) -> str:
        """What the features depend on, as a folder name of the cache."""
        return f"sift{FEATURES_VERSION}-n{self.max_features}-s{self.max_side}"


# ------------------------------------------------------------------------------------ features


@dataclass
class Features:
    """One image's local features: keypoints [n, 2] float32 in the resized frame, SIFT descriptors [n, 128]
    uint8 (OpenCV's SIFT values are whole numbers 0-255), ``scale``: decoded pixels per resized pixel."""

    keypoints: np.ndarray
    descriptors: np.ndarray
    scale: float

    @functools.cached_property
    def keypoints_area(self) -> float:
        """The area of the keypoints' convex hull (resized pixels): once an image, not once a pair."""
        return _hull_area(self.keypoints)


CONTENT_BLOCK = 1 << 12  # bytes read at each end of an image for its stamp


def cache_stamp(path: Path) -> tuple[int, int, int, int, int]:
    """What a cache entry is keyed by besides the id: (size, mtime_ns, ctime_ns, inode, content) of the image
    file, ``content`` a 64-bit digest of its first and last 4 KiB. A rewritten file changes it even when its
    size and mtime are put back and its ctime is not seen to change (a coarse clock): the last bytes hold a
    PNG's checksum of all its pixels and the end of a JPEG's coded data, which an edit shifts. Both ends cost
    66 ms per 1,000 photos of 170 KB (cached), the whole file 474 ms, the stat alone 3 ms. A copied or moved
    dataset is described again. -1 for what cannot be read."""
    try:
        stat = path.stat()
    except OSError:
        return -1, -1, -1, -1, -1
    try:
        with open(path, "rb") as f:
            digest = hashlib.blake2b(f.read(CONTENT_BLOCK), digest_size=8)
            if stat.st_size > CONTENT_BLOCK:
                f.seek(max(CONTENT_BLOCK, stat.st_size - CONTENT_BLOCK))
                digest.update(f.read(CONTENT_BLOCK))
        content = int.from_bytes(digest.digest(), "little", signed=True)
    except OSError:  # a folder named like an image, an unreadable file: listed as broken when described
        content = -1
    return stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, content


def _sift(max_features: int):
    import cv2

    return cv2.SIFT_create(nfeatures=max_features)


def decode_image(path: Path) -> np.ndarray:
    """uint8 RGB [height, width, 3] of an image file decoded as extraction decodes it (EXIF rotation, more than
    8 bits, transparency over white); BrokenImage when it cannot be read."""
    try:
        return decode_pixels(path, DEFAULT_MAX_PIXELS).transpose(1, 2, 0)  # the same pixels, without torch
    except OSError as e:
        raise BrokenImage(broken_reason(e)) from None


def describe_pixels(rgb: np.ndarray, options: VerifyOptions, mirrored: bool = False) -> Features:
    """SIFT features of uint8 RGB pixels [height, width, 3], made grey, long side shrunk to ``max_side``;
    ``mirrored``: of the image mirrored left-right, the keypoints put back where they lie in the image itself."""
    import cv2

    grey = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    height, width = grey.shape
    scale = max(height, width) / options.max_side
    if scale > 1:
        size = (max(1, round(width / scale)), max(1, round(height / scale)))
        grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
        scale = width / size[0]
    else:
        scale = 1.0
    if mirrored:
        grey = np.ascontiguousarray(grey[:, ::-1])
    keypoints, descriptors = _sift(options.max_features).detectAndCompute(grey, None)
    if descriptors is None:  # a flat image: no keypoint at all
        return Features(np.zeros((0, 2), np.float32), np.zeros((0, 128), np.uint8), scale)
    points = np.array([kp.pt for kp in keypoints], dtype=np.float32).reshape(-1, 2)
    if mirrored:  # pixel centres lie at whole coordinates: column x of the mirror is column width - 1 - x
        points[:, 0] = (grey.shape[1] - 1) - points[:, 0]
    return Features(points, np.clip(np.round(descriptors), 0, 255).astype(np.uint8), scale)


def describe_image(path: Path, options: VerifyOptions, mirrored: bool = False) -> Features:
    """SIFT features of an image file (:func:`decode_image`, :func:`describe_pixels`); BrokenImage when it
    cannot be read."""
    return describe_pixels(decode_image(path), options, mirrored)


class FeatureCache:
    """Features on disk, one ``.npz`` per image: ``ROOT/<features tag>/<2 hex>/<sha1 of the id>.npz`` holding
    the id, the file stamp and either the features or why the image is broken. An entry counts only for the
    same id and stamp; it is written under a temporary name then renamed, so a killed run leaves none half
    written, and two processes describing the same image write the same bytes. ``mirrored``: the features of the
    images mirrored (:func:`describe_pixels`), under ``<features tag>-mirrored``."""

    def __init__(self, root: str | Path, options: VerifyOptions, mirrored: bool = False) -> None:
        self.root = Path(root) / (options.features_tag + ("-mirrored" if mirrored else ""))
        self.damaged = 0  # entries found damaged by :meth:`load` (then missing: the image is described again)

    def path(self, image_id: str) -> Path:
        digest = hashlib.sha1(image_id.encode()).hexdigest()
        return self.root / digest[:2] / f"{digest}.npz"

    def load(self, image_id: str, stamp: tuple[int, ...]) -> Features | str | None:
        """The cached features, the reason the image is broken, or None when there is no valid entry."""
        try:
            with np.load(self.path(image_id)) as entry:
                if str(entry["id"]) != image_id or tuple(entry["stamp"].tolist()) != tuple(stamp):
                    return None
                if str(entry["error"]):
                    return str(entry["error"])
                return Features(entry["keypoints"], entry["descriptors"], float(entry["scale"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error):  # truncated, bytes flipped
            self.damaged += 1
            return None

    def save(self, image_id: str, stamp: tuple[int, ...], features: Features | str) -> None:
        broken = isinstance(features, str)
        arrays = {"keypoints": np.zeros((0, 2), np.float32), "descriptors": np.zeros((0, 128), np.uint8),
                  "scale": 1.0} if broken else dataclasses.asdict(features)
        with atomic_path(self.path(image_id)) as tmp, open(tmp, "wb") as f:
            np.savez(f, id=image_id, stamp=np.asarray(stamp, np.int64), error=features if broken else "", **arrays)


# ------------------------------------------------------------------------------------- matching


@dataclass
class PairMatch:
    """One pair's evidence: ``matches`` after the ratio test, ``inliers`` of the fitted model, and the model
    (``transform`` [2, 3] or [3, 3], query pixels to reference pixels, None when none was found);
    ``query_points``/``reference_points`` [inliers, 2]: the inlier keypoints in decoded pixels;
    ``reference_coverage``: the area of the inliers' convex hull in the reference over that of all its keypoints
    (0 to 1: a copy's inliers spread over the reference, a shared logo's or line of text's stay in one spot)."""

    matches: int
    inliers: int
    transform: np.ndarray | None
    query_points: np.ndarray
    reference_points: np.ndarray
    reference_coverage: float = 0.0

    @property
    def inlier_ratio(self) -> float:
        return self.inliers / self.matches if self.matches else 0.0


def _fit(source: np.ndarray, target: np.ndarray, options: VerifyOptions) -> tuple[np.ndarray | None, np.ndarray]:
    """(model, inlier mask) of the geometric model; (None, all False) below its minimal sample."""
    import cv2

    none = None, np.zeros(len(source), bool)
    if len(source) < (2 if options.geometry == "affine" else 4):
        return none
    if options.geometry == "affine":
        model, mask = cv2.estimateAffinePartial2D(source, target, method=cv2.RANSAC,
                                                  ransacReprojThreshold=options.threshold)
    else:
        method = cv2.RANSAC if options.geometry == "homography" else cv2.USAC_MAGSAC
        model, mask = cv2.findHomography(source, target, method, options.threshold)
    if model is None or mask is None or not np.isfinite(model).all():
        return none
    linear = model[:2, :2] / (model[2, 2] if model.shape == (3, 3) and model[2, 2] else 1)
    # a model that shrinks the query to a point makes every match of one reference spot an inlier
    if not MAX_AREA_CHANGE ** -1 <= abs(np.linalg.det(linear)) <= MAX_AREA_CHANGE:
        return none
    return model, mask.ravel().astype(bool)


def compared_descriptors(descriptors: np.ndarray, features: str) -> np.ndarray:
    """float32 descriptors as ``features`` (one of :data:`LOCAL_FEATURES`) compares them by L2 distance."""
    values = descriptors.astype(np.float32)
    if features == "rootsift":  # in place, in float32: 8 times quicker than through float64
        values /= np.maximum(values.sum(axis=1, keepdims=True), np.float32(1))
        np.sqrt(values, out=values)
    return values


def _hull_area(points: np.ndarray) -> float:
    """The area of the convex hull of points [n, 2] (0 below 3 points)."""
    import cv2

    return float(cv2.contourArea(cv2.convexHull(points.astype(np.float32)))) if len(points) >= 3 else 0.0


def match_features(query: Features, reference: Features, options: VerifyOptions, mirrored: bool = False) -> PairMatch:
    """kNN matches (k = 2) of the query's descriptors among the reference's (compared as ``options.features``),
    Lowe's ratio test, then the geometric model by RANSAC; deterministic for given features. ``mirrored``: the
    query's features are its mirror's (:func:`describe_pixels`): the model is fitted to the mirrored keypoints and
    the transform includes the reflection."""
    import cv2

    empty = np.zeros((0, 2), np.float32)
    if len(query.descriptors) == 0 or len(reference.descriptors) < 2:
        return PairMatch(0, 0, None, empty, empty)
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(compared_descriptors(query.descriptors, options.features),
                                                 compared_descriptors(reference.descriptors, options.features), k=2)
    good = [(m.queryIdx, m.trainIdx) for m, n in pairs if m.distance < options.ratio * n.distance]
    if not good:
        return PairMatch(0, 0, None, empty, empty)
    q, r = np.array(good).T
    source, target = query.keypoints[q], reference.keypoints[r]
    reflection = np.float32([-1 if mirrored else 1, 1])  # x -> -x: a mirror, up to the shift the model fits
    model, inliers = _fit(source * reflection, target, options)
    if model is None:
        return PairMatch(len(good), 0, None, empty, empty)
    # the model maps (reflected) resized query pixels to resized reference pixels: in decoded pixels, R · model · M · Q⁻¹
    full = np.vstack([model, [0, 0, 1]]) if model.shape == (2, 3) else model
    full = (np.diag([reference.scale, reference.scale, 1.0]) @ full @ np.diag([*reflection.tolist(), 1.0])
            @ np.diag([1 / query.scale, 1 / query.scale, 1.0]))
    # the inliers are among the reference's keypoints: their hull lies within the keypoints' hull
    coverage = _hull_area(target[inliers]) / reference.keypoints_area if reference.keypoints_area else 0.0
    return PairMatch(len(good), int(inliers.sum()), full[: model.shape[0]],
                     source[inliers] * query.scale, target[inliers] * reference.scale, min(coverage, 1.0))


def best_match(query: Features, mirrored_query: Features | None, reference: Features, options: VerifyOptions
               ) -> PairMatch:
    """The pair's match (:func:`match_features`), or its mirrored query's where that has more inliers."""
    match = match_features(query, reference, options)
    if mirrored_query is None:
        return match
    mirrored = match_features(mirrored_query, reference, options, mirrored=True)
    return mirrored if mirrored.inliers > match.inliers else match


def transform_text(transform: np.ndarray | None) -> str:
    """A transform as the sidecar writes it: its entries row by row, space-separated ('' for none)."""
    return "" if transform is None else " ".join(f"{v:.6g}" for v in transform.ravel())
