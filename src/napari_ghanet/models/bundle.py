"""Model bundles: one ``.safetensors`` file with the weights and JSON metadata.

The metadata (in the safetensors header, key ``"ghanet"``) holds everything the plugin
needs to use the weights correctly: the model config, the patch encoder the features must
come from, the gene names of each reconstructed category, the genomic normalisation
statistics, the survival bin edges in months, the training cohort's risk quantiles,
provenance and an intended-use text. Loading never unpickles anything.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from napari_ghanet._version import __version__
from napari_ghanet.encoders.base import EncoderSpec  # the one spec; bundle.EncoderSpec alias
from napari_ghanet.errors import BundleError, EncoderError, EncoderMismatchError
from napari_ghanet.io.atomic import atomic_path
from napari_ghanet.models.ghanet import GHANet, GHANetConfig

__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_FORMAT_VERSION",
    "BundleError",
    "EncoderMismatchError",
    "EncoderSpec",
    "ModelBundle",
    "build_model_from_metadata",
    "demo_bundle_path",
    "load_bundle",
    "save_bundle",
]

BUNDLE_FORMAT = "napari-ghanet-bundle"
BUNDLE_FORMAT_VERSION = 1
_HEADER_KEY = "ghanet"

REQUIRED_FIELDS = (
    "format",
    "format_version",
    "model",
    "encoder",
    "categories",
    "survival_bins_months",
    "risk_quantiles",
    "intended_use",
)






class EnsembleModel(nn.Module):
    """Average of several fold models of one architecture.

    Survival curves, reconstructions and attentions are averaged, so the ensemble's
    risk (-sum S) is the mean of its members' risks.
    """

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    @property
    def config(self):
        return getattr(self.members[0], "config", None)

    def forward(self, x=None, mask=None, omics=None):
        from napari_ghanet.models.ghanet import BatchOutput

        outs = [m(x, mask=mask, omics=omics) for m in self.members]

        def mean(name):
            vals = [getattr(o, name) for o in outs]
            if vals[0] is None:
                return None
            return torch.stack(vals).mean(0)

        survival = mean("survival")
        prev = torch.cat([torch.ones_like(survival[..., :1]), survival[..., :-1]], dim=-1)
        hazards = (1 - survival / prev.clamp(min=1e-12)).clamp(0, 1)
        reconstructed = [
            torch.stack([o.reconstructed[i] for o in outs]).mean(0)
            for i in range(len(outs[0].reconstructed))
        ]
        return BatchOutput(
            hazards=hazards,
            survival=survival,
            risk=-survival.sum(-1),
            logits=mean("logits"),
            reconstructed=reconstructed,
            morphology_attention=mean("morphology_attention"),
            genome_attention=mean("genome_attention"),
            similarity=mean("similarity"),
        )

    def forward_batch(self, x, mask=None):
        return self.forward(x, mask=mask)

    def forward_bag(self, x):
        if x.dim() != 2 or x.shape[0] == 0:
            raise ValueError(f"expected one non-empty bag of shape (N, D), got {tuple(x.shape)}")
        return self.forward(x[None]).bag(0)


def build_model_from_metadata(model_meta: dict[str, Any]) -> nn.Module:
    """Construct an (untrained) model from the bundle's ``model`` entry."""
    name = model_meta.get("name")
    config = dict(model_meta.get("config") or {})
    if name == "ghanet":
        try:
            return GHANet(GHANetConfig.from_dict(config))
        except (TypeError, ValueError) as e:
            raise BundleError(f"invalid G-HANet config in bundle: {e}") from e
    if name == "ensemble":
        member = model_meta.get("member")
        n = int(model_meta.get("n_members", 0))
        if not isinstance(member, dict) or n < 1:
            raise BundleError("ensemble bundle needs 'member' (a model entry) and 'n_members'")
        return EnsembleModel([build_model_from_metadata(member) for _ in range(n)])
    try:
        from napari_ghanet.models.baselines import build_model
    except ImportError as e:  # pragma: no cover - baselines ship with the package
        raise BundleError(f"model {name!r} needs napari_ghanet.models.baselines: {e}") from e
    try:
        return build_model(name, **config)
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(f"cannot build model {name!r} from the bundle: {e}") from e


@dataclass
class ModelBundle:
    """A loaded bundle: an eval-mode model plus its metadata."""

    path: Path | None
    model: nn.Module
    metadata: dict[str, Any]

    @property
    def encoder(self) -> EncoderSpec:
        return EncoderSpec.from_dict(self.metadata["encoder"])

    @property
    def config(self) -> dict[str, Any]:
        return self.metadata["model"].get("config", {})

    @property
    def category_names(self) -> list[str]:
        return [c["name"] for c in self.metadata["categories"]]

    @property
    def gene_names(self) -> list[list[str]]:
        return [list(c.get("genes", [])) for c in self.metadata["categories"]]

    @property
    def genomic_stats(self) -> dict[str, list[list[float]]] | None:
        return self.metadata.get("genomic_stats")

    @property
    def bin_edges_months(self) -> list[float]:
        return [float(v) for v in self.metadata["survival_bins_months"]]

    @property
    def risk_quantiles(self) -> dict[str, list[float]]:
        return self.metadata["risk_quantiles"]

    @property
    def intended_use(self) -> str:
        return self.metadata["intended_use"]

    @property
    def provenance(self) -> dict[str, Any]:
        return self.metadata.get("provenance", {})

    @property
    def name(self) -> str:
        return self.metadata.get("name") or (self.path.stem if self.path else "model")

    def percentile(self, risk: float) -> float:
        """Percentile (0-100) of ``risk`` among the training cohort's risks."""
        q = self.risk_quantiles
        probs = np.asarray(q["probs"], dtype=float)
        values = np.asarray(q["values"], dtype=float)
        order = np.argsort(values, kind="stable")
        values, probs = values[order], probs[order]
        # Tied quantile values (a flat stretch of risks) take their mean probability.
        uniq, inverse = np.unique(values, return_inverse=True)
        uprobs = np.bincount(inverse, weights=probs) / np.bincount(inverse)
        return float(100.0 * np.interp(risk, uniq, uprobs, left=0.0, right=1.0))

    def risk_group(self, risk: float) -> str:
        """'high' above the cohort's risk cut-offs, 'low' below (median split by default,
        the split used for the training Kaplan-Meier curves)."""
        groups = self.metadata.get("risk_groups") or {}
        cutoffs = groups.get("cutoffs")
        labels = groups.get("labels")
        if not cutoffs:
            q = self.risk_quantiles
            cutoffs = [float(np.interp(0.5, q["probs"], q["values"]))]
            labels = ["low", "high"]
        idx = int(np.searchsorted(np.asarray(cutoffs, dtype=float), risk, side="right"))
        return labels[idx]

    def check_encoder(self, features_spec: EncoderSpec | dict[str, Any]) -> None:
        """Raise EncoderMismatchError when features do not fit this model (the checks of
        :func:`~napari_ghanet.encoders.base.encoder_mismatch`)."""
        why = self.encoder.differences(features_spec)
        if why:
            raise EncoderMismatchError(
                f"the model {self.name!r} expects features from {self.encoder.name!r} "
                f"({self.encoder.dim}-d, {self.encoder.patch_px} px at "
                f"{self.encoder.target_mpp:g} um/px) but got " + ", ".join(why)
                + ". Re-embed the slide with the model's encoder."
            )


def _validate_metadata(meta: dict[str, Any], where: str) -> None:
    if meta.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{where} is not a napari-ghanet model bundle")
    missing = [k for k in REQUIRED_FIELDS if k not in meta]
    if missing:
        raise BundleError(f"{where} lacks the metadata field(s) {missing}")
    version = meta["format_version"]
    if not isinstance(version, int) or version > BUNDLE_FORMAT_VERSION:
        raise BundleError(
            f"{where} has bundle format version {version}, newer than this napari-ghanet "
            f"({__version__}) reads (<= {BUNDLE_FORMAT_VERSION}): upgrade napari-ghanet"
        )
    try:
        EncoderSpec.from_dict(meta["encoder"])
    except EncoderError as e:
        raise BundleError(f"{where}: {e}") from None
    cats = meta["categories"]
    if not isinstance(cats, list) or not all(isinstance(c, dict) and "name" in c for c in cats):
        raise BundleError(f"{where}: 'categories' must be a list of {{name, genes}} entries")
    edges = meta["survival_bins_months"]
    if not isinstance(edges, list) or len(edges) < 2 or any(
        b <= a for a, b in zip(edges, edges[1:])
    ):
        raise BundleError(f"{where}: 'survival_bins_months' must be increasing bin edges")
    q = meta["risk_quantiles"]
    if not isinstance(q, dict) or len(q.get("probs", [])) != len(q.get("values", [])) or not q.get(
        "probs"
    ):
        raise BundleError(f"{where}: 'risk_quantiles' needs equal-length 'probs' and 'values'")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, EncoderSpec):
        return obj.to_dict()
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def save_bundle(path: str | Path, model: nn.Module, metadata: dict[str, Any]) -> Path:
    """Write ``model``'s weights and ``metadata`` to a ``.safetensors`` bundle atomically.

    ``metadata`` must hold the fields of REQUIRED_FIELDS except ``format`` and
    ``format_version`` (filled in here). ``metadata["model"]`` is ``{"name", "config"}``;
    for GHANet and EnsembleModel it is filled in from the model when missing.
    """
    from safetensors.torch import save_file

    path = Path(path)
    meta = dict(metadata)
    meta["format"] = BUNDLE_FORMAT
    meta["format_version"] = BUNDLE_FORMAT_VERSION
    meta.setdefault("package_version", __version__)
    if "model" not in meta:
        meta["model"] = _describe_model(model)
    meta = _jsonable(meta)
    _validate_metadata(meta, str(path))
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={_HEADER_KEY: json.dumps(meta)})
    return path


def _describe_model(model: nn.Module) -> dict[str, Any]:
    if isinstance(model, GHANet):
        return {"name": "ghanet", "config": model.config.to_dict()}
    if isinstance(model, EnsembleModel):
        return {
            "name": "ensemble",
            "member": _describe_model(model.members[0]),
            "n_members": len(model.members),
        }
    describe = getattr(model, "describe", None)
    if callable(describe):
        return describe()
    raise BundleError(
        f"cannot describe a {type(model).__name__}: give metadata['model'] = "
        "{'name': ..., 'config': {...}}"
    )


def read_bundle_metadata(path: str | Path) -> dict[str, Any]:
    """The bundle's metadata, without loading the weights."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise BundleError(f"model bundle not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as e:
        raise BundleError(
            f"{path} is not a readable .safetensors model bundle (corrupt or truncated?): {e}"
        ) from e
    if _HEADER_KEY not in header:
        raise BundleError(f"{path} is a safetensors file without napari-ghanet metadata")
    try:
        meta = json.loads(header[_HEADER_KEY])
    except json.JSONDecodeError as e:
        raise BundleError(f"{path}: the bundle metadata is not valid JSON ({e})") from e
    _validate_metadata(meta, str(path))
    return meta


def load_bundle(path: str | Path, device: str | torch.device = "cpu") -> ModelBundle:
    """Load a bundle into an eval-mode model. Raises BundleError with the reason."""
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_bundle_metadata(path)
    model = build_model_from_metadata(meta["model"])
    try:
        state = load_file(str(path), device="cpu")
    except Exception as e:
        raise BundleError(f"{path}: cannot read the weights ({e})") from e
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise BundleError(
            f"{path}: weights do not match the model config (missing {missing[:8]}, "
            f"unexpected {unexpected[:8]})"
        )
    bad = [k for k in expected if expected[k].shape != state[k].shape]
    if bad:
        raise BundleError(f"{path}: weight shapes do not match the model config: {bad[:8]}")
    model.load_state_dict(state)
    model.to(device).eval()
    return ModelBundle(path=path, model=model, metadata=meta)


def demo_bundle_path() -> Path:
    """Path of the demonstration model shipped with the package."""
    return Path(__file__).resolve().parents[1] / "data" / "demo_model.safetensors"
