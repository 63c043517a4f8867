"""Cohort data: survival table, gene signatures, patient splits and slide features.

Formats are those the field already uses (the paper's code, CLAM, TRIDENT):

* cohort table (CSV, may be zipped): one row per slide with ``case_id``, ``slide_id``,
  ``survival_months``, ``censorship`` (1 = censored) and gene columns suffixed
  ``_rnaseq``, ``_cnv`` or ``_mut``; patient-level values repeat on each slide's row.
* ``signatures.csv``: one column per functional category listing gene symbols; a
  category's features are its genes' columns present in the table (all suffixes).
* splits: a folder of ``splits_K.csv`` with columns ``train`` and ``val`` of case ids
  (``val`` is the held-out fold). Patients, not slides, are split.
* features: a folder of per-slide ``.h5`` (``features`` N x D, ``coords`` N x 2) or
  ``.pt`` tensors named by ``slide_id`` (with or without the slide file extension, also
  under CLAM's ``h5_files/`` and ``pt_files/``). A patient's slides form one bag.

Every problem is a :class:`CohortError` whose message names what is wrong and what to do.
"""

from __future__ import annotations

import json
import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from napari_ghanet.encoders.aliases import (
    UnknownEncoderName,
    detect_foreign_encoder,
    resolve_encoder,
)
from napari_ghanet.errors import CohortError, FeaturesError
from napari_ghanet.io.atomic import atomic_path
from napari_ghanet.io.features import load_features
from napari_ghanet.io.h5safe import open_h5, plain_dataset
from napari_ghanet.io.wsidata import read_wsidata_features
from napari_ghanet.models.clusters import phenotype_clusters

__all__ = [
    "CohortError",
    "Cohort",
    "Split",
    "FoldData",
    "FeatureStore",
    "GENE_SUFFIXES",
    "REQUIRED_COLUMNS",
    "read_cohort",
    "read_signatures",
    "read_splits",
    "resolve_fold",
    "find_feature_files",
]

REQUIRED_COLUMNS = ("case_id", "slide_id", "survival_months", "censorship")
GENE_SUFFIXES = ("_rnaseq", "_cnv", "_mut")
# Extensions stripped from slide ids when looking for feature files.
SLIDE_EXTENSIONS = (
    ".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide",
    ".czi", ".dcm", ".qptiff", ".ome.tif", ".ome.tiff", ".jpg", ".jpeg", ".png",
)
_MAX_LISTED = 20




def _listing(names, limit: int = _MAX_LISTED) -> str:
    names = [str(n) for n in names]
    shown = ", ".join(names[:limit])
    more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
    return f"{shown}{more}"


@dataclass
class Cohort:
    """One row per patient, genomics as a float32 matrix.

    patients: DataFrame indexed 0..P-1 with ``case_id``, ``survival_months`` (float),
        ``censorship`` (int, 1 = censored) and ``slide_ids`` (list of str).
    genomics: float32 (P, G) raw (unscaled) values of ``gene_columns``.
    categories: names of the functional categories (signature columns), in file order.
    category_columns: for each category, its sorted gene columns present in the table.
    category_index: for each category, int64 indices of those columns into ``gene_columns``.
    """

    patients: pd.DataFrame
    genomics: np.ndarray
    gene_columns: list[str]
    categories: list[str]
    category_columns: list[list[str]]
    category_index: list[np.ndarray]
    source: dict = field(default_factory=dict)

    @property
    def case_ids(self) -> list[str]:
        return self.patients["case_id"].tolist()

    @property
    def months(self) -> np.ndarray:
        return self.patients["survival_months"].to_numpy(np.float64)

    @property
    def censorship(self) -> np.ndarray:
        return self.patients["censorship"].to_numpy(np.int64)

    def index_of(self, case_ids) -> np.ndarray:
        lookup = {c: i for i, c in enumerate(self.case_ids)}
        return np.array([lookup[c] for c in case_ids], dtype=np.int64)


@dataclass
class Split:
    """Case ids of one fold: ``train`` and held-out ``test`` (the file's ``val`` column)."""

    name: str
    train: list[str]
    test: list[str]


@dataclass
class FoldData:
    """A split resolved against the cohort: patient indices and what was skipped.

    skipped maps a reason (``absent_from_table``, ``no_features``) to the case ids dropped.
    """

    name: str
    train: np.ndarray
    test: np.ndarray
    skipped: dict[str, list[str]] = field(default_factory=dict)


def _gene_columns(columns) -> list[str]:
    return [c for c in columns if str(c).endswith(GENE_SUFFIXES)]


def read_signatures(path: str | os.PathLike) -> OrderedDict[str, list[str]]:
    """Functional categories from ``signatures.csv``: {category: [gene symbols]}, file order."""
    path = Path(path)
    if not path.is_file():
        raise CohortError(f"signatures file not found: {path}")
    try:
        table = pd.read_csv(path)
    except Exception as exc:  # pandas raises many types for malformed CSV
        raise CohortError(f"cannot read signatures file {path}: {exc}") from exc
    if table.shape[1] == 0:
        raise CohortError(f"signatures file {path} has no columns (one column per category)")
    out: OrderedDict[str, list[str]] = OrderedDict()
    for col in table.columns:
        genes = [str(g).strip() for g in pd.unique(table[col].dropna())]
        genes = [g for g in genes if g]
        if not genes:
            raise CohortError(f"category {col!r} in {path} lists no genes")
        out[str(col)] = genes
    return out


def category_columns(gene_columns: list[str], signatures: dict[str, list[str]]) -> list[list[str]]:
    """Each category's gene columns (all suffixes) present in the table, sorted by name."""
    present = set(gene_columns)
    out = []
    for genes in signatures.values():
        wanted = {g + s for g in genes for s in GENE_SUFFIXES}
        out.append(sorted(wanted & present))
    return out


def read_cohort(
    table_path: str | os.PathLike, signatures_path: str | os.PathLike
) -> Cohort:
    """Read and validate the cohort table and signatures; one row per patient.

    Raises CohortError for missing columns, no gene columns, non-numeric or NaN genomics
    (naming the columns and cases), bad survival/censorship values, duplicated slides,
    slides of one patient that disagree on survival, and categories with no gene column.
    """
    table_path = Path(table_path)
    if not table_path.is_file():
        raise CohortError(f"cohort table not found: {table_path}")
    try:
        table = pd.read_csv(table_path, low_memory=False)
    except Exception as exc:
        raise CohortError(f"cannot read cohort table {table_path}: {exc}") from exc
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise CohortError(
            f"cohort table {table_path.name} lacks required column(s) {missing}; it needs "
            f"{list(REQUIRED_COLUMNS)} and gene columns suffixed {list(GENE_SUFFIXES)}"
        )
    genes = _gene_columns(table.columns)
    if not genes:
        raise CohortError(
            f"cohort table {table_path.name} has no gene columns: name them "
            f"<GENE>_rnaseq, <GENE>_cnv or <GENE>_mut"
        )
    table["case_id"] = table["case_id"].astype(str).str.strip()
    table["slide_id"] = table["slide_id"].astype(str).str.strip()

    dup = table["slide_id"][table["slide_id"].duplicated()].unique()
    if len(dup):
        raise CohortError(f"slide_id repeated in the cohort table: {_listing(dup)}")

    numeric = table[genes].apply(pd.to_numeric, errors="coerce")
    bad_type = [c for c in genes if numeric[c].isna().sum() > table[c].isna().sum()]
    if bad_type:
        raise CohortError(f"non-numeric values in gene column(s): {_listing(bad_type)}")
    nan_cols = [c for c in genes if numeric[c].isna().any()]
    if nan_cols:
        cases = table.loc[numeric[nan_cols].isna().any(axis=1), "case_id"].unique()
        raise CohortError(
            f"NaN in genomics: column(s) {_listing(nan_cols)} for case(s) {_listing(cases)}; "
            "impute or drop them before training"
        )

    months = pd.to_numeric(table["survival_months"], errors="coerce")
    bad = table.loc[months.isna() | (months < 0), "case_id"].unique()
    if len(bad):
        raise CohortError(
            f"survival_months missing, non-numeric or negative for case(s) {_listing(bad)}"
        )
    cens = pd.to_numeric(table["censorship"], errors="coerce")
    bad = table.loc[~cens.isin([0, 1]), "case_id"].unique()
    if len(bad):
        raise CohortError(
            f"censorship must be 0 (event) or 1 (censored); case(s) {_listing(bad)} are not"
        )
    table["survival_months"] = months.astype(np.float64)
    table["censorship"] = cens.astype(np.int64)
    table[genes] = numeric.astype(np.float64)

    grouped = table.groupby("case_id", sort=False)
    for col in ("survival_months", "censorship"):
        varying = grouped[col].nunique()
        varying = varying[varying > 1].index.tolist()
        if varying:
            raise CohortError(
                f"slides of the same patient disagree on {col}: {_listing(varying)}"
            )
    varying = (grouped[genes].nunique() > 1).any(axis=1)
    varying = varying[varying].index.tolist()
    if varying:
        raise CohortError(f"slides of the same patient disagree on genomics: {_listing(varying)}")

    first = grouped.head(1).reset_index(drop=True)
    slides = grouped["slide_id"].apply(list)
    patients = pd.DataFrame(
        {
            "case_id": first["case_id"].to_numpy(),
            "survival_months": first["survival_months"].to_numpy(np.float64),
            "censorship": first["censorship"].to_numpy(np.int64),
            "slide_ids": [slides[c] for c in first["case_id"]],
        }
    )

    signatures = read_signatures(signatures_path)
    per_category = category_columns(genes, signatures)
    empty = [name for name, cols in zip(signatures, per_category) if not cols]
    if empty:
        raise CohortError(
            f"category(ies) {empty} from {Path(signatures_path).name} have no gene column in "
            f"{table_path.name}: the signatures and the table do not match"
        )
    col_index = {c: i for i, c in enumerate(genes)}
    return Cohort(
        patients=patients,
        genomics=first[genes].to_numpy(np.float32),
        gene_columns=list(genes),
        categories=list(signatures),
        category_columns=per_category,
        category_index=[np.array([col_index[c] for c in cols], np.int64) for cols in per_category],
        source={"table": str(table_path), "signatures": str(signatures_path)},
    )


def read_splits(path: str | os.PathLike) -> list[Split]:
    """Read ``splits_K.csv`` files (sorted by K) from a folder, or one split CSV.

    Raises CohortError when none is found, a file lacks ``train``/``val`` or a patient is
    in both sets of a split.
    """
    path = Path(path)
    if path.is_dir():
        files = [p for p in path.iterdir() if re.fullmatch(r"splits_(\d+)\.csv", p.name)]
        files.sort(key=lambda p: int(re.fullmatch(r"splits_(\d+)\.csv", p.name).group(1)))
        if not files:
            raise CohortError(f"no splits_K.csv files in {path}")
    elif path.is_file():
        files = [path]
    else:
        raise CohortError(f"splits folder not found: {path}")
    splits = []
    for f in files:
        try:
            table = pd.read_csv(f, dtype=str)
        except Exception as exc:
            raise CohortError(f"cannot read split file {f}: {exc}") from exc
        missing = [c for c in ("train", "val") if c not in table.columns]
        if missing:
            raise CohortError(
                f"split file {f.name} lacks column(s) {missing}: it needs 'train' and 'val' "
                "(the held-out patients) columns of case ids"
            )
        train = list(dict.fromkeys(table["train"].dropna().str.strip()))
        test = list(dict.fromkeys(table["val"].dropna().str.strip()))
        both = sorted(set(train) & set(test))
        if both:
            raise CohortError(
                f"split {f.name} puts {len(both)} patient(s) in both train and val: "
                f"{_listing(both)}; patients must be split, not slides"
            )
        if not train or not test:
            raise CohortError(f"split {f.name} has an empty train or val set")
        splits.append(Split(name=f.stem, train=train, test=test))
    return splits


_FEATURE_SUFFIXES = (".h5", ".hdf5", ".npz")


def find_feature_files(features_dir: str | os.PathLike) -> dict[str, Path]:
    """Index a features folder: {slide stem: path}.

    Reads the layouts other tools write: this package's and CLAM's (``.h5`` in the folder
    or ``h5_files/``, ``.pt`` in ``pt_files/``), TRIDENT's (the ``features_<encoder>``
    folder itself, or a job folder holding exactly one), slide2vec's
    (``tile_embeddings/<slide>.pt|.npz``) and LazySlide/wsidata stores (``<slide>.zarr``
    folders). ``.h5`` is preferred over ``.npz`` over ``.pt`` over ``.zarr`` for one slide.
    """
    root = Path(features_dir)
    if not root.is_dir():
        raise CohortError(f"features folder not found: {root}")
    trident = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("features_"))
    if len(trident) > 1 and not any(root.glob("*.h5")):
        raise CohortError(
            f"{root} holds features of several encoders ({', '.join(p.name for p in trident)}): "
            "give one of these folders"
        )
    subs = [root / "pt_files", root / "tile_embeddings", *trident[:1], root, root / "h5_files"]
    index: dict[str, Path] = {}
    for sub in subs:  # .zarr stores, then .pt, then .npz / .h5 override
        if sub.is_dir():
            for entry in sorted(sub.iterdir()):
                if entry.suffix == ".zarr" and entry.is_dir():
                    index.setdefault(entry.stem, entry)
    for sub in subs:
        if sub.is_dir():
            for entry in sorted(sub.iterdir()):
                if entry.suffix == ".pt" and (entry.stem not in index or index[entry.stem].suffix == ".zarr"):
                    index[entry.stem] = entry
    for suffix in (".npz", ".h5"):
        for sub in subs:
            if sub.is_dir():
                for entry in sorted(sub.iterdir()):
                    if entry.suffix == suffix or (suffix == ".h5" and entry.suffix == ".hdf5"):
                        index[entry.stem] = entry
    return index


def slide_stem(slide_id: str) -> str:
    """``slide_id`` without a whole-slide-image extension (``X.svs`` -> ``X``)."""
    low = slide_id.lower()
    for ext in sorted(SLIDE_EXTENSIONS, key=len, reverse=True):
        if low.endswith(ext):
            return slide_id[: -len(ext)]
    return slide_id


class FeatureStore:
    """Patch-feature bags of patients, read from a features folder with a bounded cache.

    ``bag(i)`` returns float32 (N, D): the patch features of all of patient ``i``'s slides
    that have a feature file, concatenated in table order.
    """

    def __init__(
        self,
        cohort: Cohort,
        features_dir: str | os.PathLike,
        cache_bytes: int = 4 << 30,
    ):
        self.cohort = cohort
        self.features_dir = Path(features_dir)
        self.index = find_feature_files(self.features_dir)
        self.cache_bytes = int(cache_bytes)
        self._clusters: dict[tuple[int, int], np.ndarray] = {}
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cached = 0
        self._dim: int | None = None
        self._attrs: dict | None = None

    def slide_path(self, slide_id: str) -> Path | None:
        return self.index.get(slide_id) or self.index.get(slide_stem(slide_id))

    def missing_slides(self, patient_index) -> list[str]:
        """Slide ids (of the given patients) that have no feature file."""
        out = []
        for i in patient_index:
            out += [s for s in self.cohort.patients.at[int(i), "slide_ids"] if self.slide_path(s) is None]
        return out

    def has_features(self, i: int) -> bool:
        return any(self.slide_path(s) is not None for s in self.cohort.patients.at[int(i), "slide_ids"])

    @property
    def feature_dim(self) -> int:
        if self._dim is None:
            first = next(iter(self.index.values()), None)
            if first is None:
                raise CohortError(f"no .h5 or .pt feature files in {self.features_dir}")
            self._dim = int(_read_features(first)[0].shape[1])
        return self._dim

    def attrs(self) -> dict:
        """Attributes of the first feature file used by the cohort (encoder spec etc.)."""
        if self._attrs is None:
            for slides in self.cohort.patients["slide_ids"]:
                paths = [self.slide_path(s) for s in slides]
                paths = [p for p in paths if p is not None]
                if paths:
                    feats, attrs = _read_features(paths[0])
                    self._attrs = _with_registered_encoder(paths[0], attrs, feats.shape[1])
                    break
            else:
                self._attrs = {}
        return dict(self._attrs)

    def bag_size(self, i: int) -> int:
        """Patches in patient ``i``'s bag, from the ``.h5`` headers (no feature read)."""
        i = int(i)
        paths = [self.slide_path(s) for s in self.cohort.patients.at[i, "slide_ids"]]
        paths = [p for p in paths if p is not None]
        if i in self._cache or any(p.suffix not in (".h5", ".hdf5") for p in paths):
            return len(self.bag(i))
        n = 0
        for path in paths:
            # a regular file whose features are plain data inside it (io.h5safe): a FIFO,
            # an external link or a 477 GiB declaration is a CohortError, never a hang
            try:
                with open_h5(path) as f:
                    ds = plain_dataset(f, "features", path, kinds="fiu")
                    if ds is None:
                        raise FeaturesError(f"{path}: no 'features' dataset")
                    shape = ds.shape
            except FeaturesError as exc:
                raise CohortError(f"cannot read features file {path}: {exc}") from None
            except Exception as exc:
                raise CohortError(f"cannot read features file {path}: {exc}") from exc
            n += int(shape[-2]) if len(shape) >= 2 else 0
        return n

    def clusters(self, i: int, k: int = 10) -> np.ndarray:
        """Patient ``i``'s patch phenotype clusters (int64, one per row of ``bag(i)``):
        k-means with ``k`` clusters on each slide's features, computed once per slide and
        cached beside its feature file (DeepAttnMISL)."""
        i = int(i)
        key = (i, k)
        if key in self._clusters:
            return self._clusters[key]
        parts = []
        for slide in self.cohort.patients.at[i, "slide_ids"]:
            path = self.slide_path(slide)
            if path is not None:
                parts.append(_slide_clusters(path, _read_features(path)[0], k))
        ids = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        self._clusters[key] = ids
        return ids

    def bag(self, i: int) -> np.ndarray:
        i = int(i)
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        parts = []
        for slide in self.cohort.patients.at[i, "slide_ids"]:
            path = self.slide_path(slide)
            if path is None:
                continue
            feats = _read_features(path)[0]
            if feats.ndim != 2 or feats.shape[0] == 0:
                raise CohortError(
                    f"features of slide {slide} ({path}) have shape {feats.shape}; expected "
                    "(N, D) with N >= 1 patches: re-extract them"
                )
            if not np.isfinite(feats).all():
                raise CohortError(
                    f"NaN or infinite values in the features of slide {slide} ({path}); "
                    "re-extract them"
                )
            if self._dim is None:
                self._dim = int(feats.shape[1])
            elif feats.shape[1] != self._dim:
                raise CohortError(
                    f"slide {slide} has {feats.shape[1]}-d features but others have "
                    f"{self._dim}-d: all slides must be embedded with the same encoder"
                )
            parts.append(feats)
        if not parts:
            case = self.cohort.patients.at[i, "case_id"]
            raise CohortError(f"patient {case} has no feature file for any slide")
        bag = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        if bag.nbytes <= self.cache_bytes:
            self._cache[i] = bag
            self._cached += bag.nbytes
            while self._cached > self.cache_bytes:
                _, old = self._cache.popitem(last=False)
                self._cached -= old.nbytes
        return bag


def _slide_clusters(path: Path, feats: np.ndarray, k: int) -> np.ndarray:
    """Phenotype cluster ids of one slide's patches, cached as ``<file>.clusters<k>.npy``
    beside the features (recomputed when the patch count differs; kept in memory only
    when the folder is read-only)."""
    cache = path.with_name(f"{path.name}.clusters{k}.npy")
    # a regular file no larger than its header and the ids (a crafted header cannot make
    # np.load allocate more), ids in [0, k): else recomputed
    if cache.is_file() and cache.stat().st_size <= 4096 + 8 * len(feats):
        try:
            ids = np.load(cache, allow_pickle=False)
            if (ids.shape == (len(feats),) and ids.dtype == np.int64
                    and (ids.size == 0 or (ids.min() >= 0 and ids.max() < k))):
                return ids
        except (OSError, ValueError, MemoryError):
            pass
    ids = phenotype_clusters(feats, k=k, seed=0)
    try:
        with atomic_path(cache) as tmp, open(tmp, "wb") as f:
            np.save(f, ids)
    except OSError:
        pass
    return ids


def _with_registered_encoder(path: Path, attrs: dict, dim: int) -> dict:
    """``attrs`` with ``encoder`` set to the registered encoder another tool's name for it
    stands for (``encoder_source`` says where it was found), the TRIDENT patch geometry as
    ``target_mpp``; an unknown name leaves ``encoder`` out and explains in
    ``encoder_unresolved``."""
    attrs = dict(attrs)
    found = detect_foreign_encoder(path, attrs)
    if found is not None:
        try:
            attrs["encoder"] = resolve_encoder(found, dim)
            attrs["encoder_source"] = f"{found.tool} {found.name!r} ({found.where})"
        except UnknownEncoderName as exc:
            attrs.pop("encoder", None)
            attrs["encoder_unresolved"] = str(exc)
    mag = attrs.get("target_magnification")
    if "target_mpp" not in attrs and isinstance(mag, int | float) and mag > 0:
        attrs["target_mpp"] = 10.0 / float(mag)  # 20x = 0.5 um/px, TRIDENT's convention
    return attrs


def _read_features(path: Path) -> tuple[np.ndarray, dict]:
    """float32 (N, D) features and the file's attributes (``.h5``, ``.pt``, ``.npz`` or a
    wsidata ``.zarr`` store)."""
    try:
        pf = read_wsidata_features(path) if path.suffix == ".zarr" else load_features(path)
    except Exception as exc:  # FeaturesError, OSError, ...: name the file either way
        raise CohortError(f"cannot read features file {path}: {exc}") from exc
    return pf.features, dict(pf.attrs or {})


def _plain(value):
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def resolve_fold(
    cohort: Cohort,
    split: Split,
    features: FeatureStore | None = None,
    allow_missing: bool = False,
) -> FoldData:
    """Map a split's case ids to cohort rows, checking nothing is silently lost.

    Cases absent from the table and patients whose slides have no feature file are listed
    by name and count in the error; with ``allow_missing`` they are skipped instead (their
    ids returned in ``skipped``). Slides without features of a patient that has others are
    skipped under ``allow_missing`` too (named in ``skipped['slides_without_features']``).
    """
    known = set(cohort.case_ids)
    problems: list[str] = []
    skipped: dict[str, list[str]] = {}
    absent = [c for c in split.train + split.test if c not in known]
    if absent:
        skipped["absent_from_table"] = absent
        problems.append(f"{len(absent)} case(s) of the split are absent from the table: {_listing(absent)}")
    train = [c for c in split.train if c in known]
    test = [c for c in split.test if c in known]
    if features is not None:
        idx = cohort.index_of(train + test)
        missing_slides = features.missing_slides(idx)
        if missing_slides:
            skipped["slides_without_features"] = missing_slides
            problems.append(
                f"{len(missing_slides)} slide(s) have no feature file in "
                f"{features.features_dir}: {_listing(missing_slides)}"
            )
        no_bag = [c for c, i in zip(train + test, idx) if not features.has_features(i)]
        if no_bag:
            skipped["no_features"] = no_bag
            train = [c for c in train if c not in set(no_bag)]
            test = [c for c in test if c not in set(no_bag)]
    if problems and not allow_missing:
        raise CohortError(
            f"split {split.name}: " + "; ".join(problems)
            + ". Fix the inputs, or pass --allow-missing to skip them (counts are recorded)"
        )
    if not train or not test:
        raise CohortError(f"split {split.name} has no usable train or test patient left")
    return FoldData(split.name, cohort.index_of(train), cohort.index_of(test), skipped)


def describe(cohort: Cohort) -> dict:
    """A JSON-able summary of the cohort (for results and bundles)."""
    return {
        "patients": len(cohort.patients),
        "slides": int(sum(len(s) for s in cohort.patients["slide_ids"])),
        "censored_fraction": float(cohort.censorship.mean()),
        "genes": len(cohort.gene_columns),
        "categories": {n: len(c) for n, c in zip(cohort.categories, cohort.category_columns)},
        **cohort.source,
    }


def dumps(obj) -> str:
    return json.dumps(obj, indent=2, sort_keys=False, default=_plain)
