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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from napari_ghanet._version import __version__
from napari_ghanet.errors import ArgumentError, BundleError, EncoderError, EncoderMismatchError
from napari_ghanet.io.atomic import atomic_path
from napari_ghanet.io.encoder_spec import (  # the one spec; bundle.EncoderSpec alias
    EncoderSpec,
    encoder_mismatch,
)
from napari_ghanet.models import bundle_schema as schema
from napari_ghanet.models.baselines import build_model
from napari_ghanet.models.ghanet import BatchOutput, GHANet, GHANetConfig
from napari_ghanet.models.risk import risk_group, risk_percentile

__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_FORMAT_VERSION",
    "BundleError",
    "EncoderMismatchError",
    "EncoderSpec",
    "ModelBundle",
    "build_model_from_metadata",
    "demo_bundle_path",
    "expected_tensors",
    "load_bundle",
    "save_bundle",
]

BUNDLE_FORMAT = schema.BUNDLE_FORMAT
BUNDLE_FORMAT_VERSION = schema.BUNDLE_FORMAT_VERSION
_HEADER_KEY = "ghanet"

REQUIRED_FIELDS = schema.REQUIRED_FIELDS






class EnsembleModel(nn.Module):
    """Average of several fold models of one architecture.

    Survival curves, reconstructions and attentions are averaged, so the ensemble's
    risk (-sum S) is the mean of its members' risks.
    """

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if not members:
            raise ArgumentError("an ensemble needs at least one member: pass one model per fold")
        self.members = nn.ModuleList(members)

    @property
    def config(self):
        return getattr(self.members[0], "config", None)

    def forward(self, x=None, mask=None, omics=None):
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
            raise ArgumentError(f"expected one non-empty bag of shape (N, D), got {tuple(x.shape)}")
        return self.forward(x[None]).bag(0)


def build_model_from_metadata(model_meta: dict[str, Any]) -> nn.Module:
    """Construct an (untrained) model from the bundle's ``model`` entry."""
    if not isinstance(model_meta, dict):
        raise BundleError("the bundle's 'model' entry must be an object")
    name = model_meta.get("name")
    config = model_meta.get("config") or {}
    if not isinstance(config, dict):
        raise BundleError("the bundle's model config must be an object")
    config = dict(config)
    if name == "ghanet":
        try:
            return GHANet(GHANetConfig.from_dict(config))
        except (TypeError, ValueError) as e:
            raise BundleError(f"invalid G-HANet config in bundle: {e}") from e
    if name == "ensemble":
        member = model_meta.get("member")
        n = model_meta.get("n_members", 0)
        if not isinstance(member, dict) or not isinstance(n, int) or not (
            1 <= n <= schema.MAX_ENSEMBLE_MEMBERS
        ):
            raise BundleError("ensemble bundle needs 'member' (a model entry) and 'n_members'")
        return EnsembleModel([build_model_from_metadata(member) for _ in range(n)])
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
    notices: list[str] = field(default_factory=list)
    """What loading changed (e.g. fp16 weights converted to float32), for the report."""

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
        """Bin edges in months; an open last edge (null in the file) is inf."""
        return [math.inf if v is None else float(v) for v in self.metadata["survival_bins_months"]]

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
    def distribution(self) -> dict[str, Any] | None:
        """The training-distribution summary
        (:mod:`~napari_ghanet.models.distribution_summary`, checked on load), or None for a
        bundle made without one."""
        return self.metadata.get("distribution")

    @property
    def name(self) -> str:
        return self.metadata.get("name") or (self.path.stem if self.path else "model")

    def percentile(self, risk: float) -> float:
        """Percentile (0-100) of ``risk`` among the training cohort's risks."""
        return risk_percentile(risk, self.metadata)

    def risk_group(self, risk: float) -> str:
        """'low', 'intermediate' or 'high': the training cohort's risk tertiles (stored in
        the bundle, or interpolated from its risk quantiles for older bundles); see
        :func:`napari_ghanet.models.risk.risk_group`."""
        return risk_group(risk, self.metadata)[0]

    def check_encoder(self, features_spec: EncoderSpec | dict[str, Any]) -> None:
        """Raise EncoderMismatchError when features do not fit this model (the checks of
        :func:`~napari_ghanet.io.encoder_spec.encoder_mismatch`)."""
        why = encoder_mismatch(self.encoder, features_spec, model=self.name)
        if why:
            raise EncoderMismatchError(why)


def _validate_metadata(meta: dict[str, Any], where: str) -> None:
    """One BundleError listing every problem of the metadata (see bundle_schema)."""
    schema.validate_metadata(meta, where, __version__)
    try:
        EncoderSpec.from_dict(meta["encoder"])
    except EncoderError as e:
        raise BundleError(f"{where}: {e}") from None


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


def _check_path(path: Path) -> None:
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.safetensors"))[:5]
        hint = f" (found: {', '.join(found)})" if found else " (it holds no .safetensors file)"
        raise BundleError(
            f"{path} is a folder; give the .safetensors bundle file inside it{hint}"
        )
    if not path.is_file():
        raise BundleError(f"model bundle not found: {path}")


def _read_checked(path: Path) -> tuple[schema.SafetensorsHeader, dict[str, Any]]:
    """The checked safetensors header and bundle metadata; reads no weight."""
    _check_path(path)
    header = schema.read_header(path)
    if _HEADER_KEY not in header.metadata:
        raise BundleError(f"{path} is a safetensors file without napari-ghanet metadata")
    meta = schema.parse_json(
        header.metadata[_HEADER_KEY], f"{path}: the bundle metadata", schema.MAX_METADATA_BYTES
    )
    _validate_metadata(meta, str(path))
    return header, meta


def read_bundle_metadata(path: str | Path) -> dict[str, Any]:
    """The bundle's metadata, checked against the schema, without loading the weights.

    Raises
    ------
    BundleError
        Missing file, a folder, a damaged header, or metadata that break the schema.
    """
    path = Path(path)
    try:
        return _read_checked(path)[1]
    except BundleError:
        raise
    except Exception as e:  # a last guard: anything else a crafted file causes
        raise BundleError(_unexpected(path, e)) from e


def _unexpected(path: Path, e: BaseException) -> str:
    text = " ".join(str(e).split())[:200]
    return f"{path}: cannot load this model bundle ({type(e).__name__}: {text})"


_TORCH_FROM_ST = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
                  "BF16": torch.bfloat16}


def expected_tensors(model_meta: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Names, shapes and dtypes of the state dict the ``model`` entry implies.

    The model is built on PyTorch's ``meta`` device, so nothing is allocated; call it
    only on metadata that passed the schema (sizes are capped there).
    """
    with torch.device("meta"):
        model = build_model_from_metadata(model_meta)
    return {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}


def _check_tensors(path: Path, header: schema.SafetensorsHeader, meta: dict[str, Any]) -> list[str]:
    """Compare the declared tensors with those the config implies; notices on conversions."""
    expected = expected_tensors(meta["model"])
    n_params = sum(math.prod(shape) for shape, _ in expected.values())
    if n_params > schema.MAX_PARAMETERS:
        raise BundleError(
            f"{path}: the model config implies {n_params:,} parameters, more than the "
            f"{schema.MAX_PARAMETERS:,} a bundle may hold"
        )
    declared = header.tensors
    missing = sorted(set(expected) - set(declared))
    unexpected = sorted(set(declared) - set(expected))
    if missing or unexpected:
        raise BundleError(
            f"{path}: weights do not match the model config (missing {missing[:8]}, "
            f"unexpected {unexpected[:8]})"
        )
    bad = [k for k in expected if tuple(declared[k].shape) != expected[k][0]]
    if bad:
        raise BundleError(f"{path}: weight shapes do not match the model config: {bad[:8]}")
    notices: list[str] = []
    converted = []
    for k, (_, dtype) in expected.items():
        got = declared[k].dtype
        if dtype.is_floating_point:
            if got not in schema.FLOAT_DTYPES:
                raise BundleError(
                    f"{path}: tensor {k!r} holds {got} values; a bundle holds floating-point "
                    "weights only (F32, or F64/F16/BF16, converted)"
                )
            if got in ("F16", "BF16"):
                converted.append(got)
        elif got != str(dtype).replace("torch.", "").upper():
            raise BundleError(f"{path}: tensor {k!r} holds {got} values, expected {dtype}")
    if converted:
        notices.append(
            f"{len(converted)} weight tensor(s) of the model are stored in "
            f"{'/'.join(sorted(set(converted)))} and were converted to float32"
        )
    return notices


def load_bundle(path: str | Path, device: str | torch.device = "cpu") -> ModelBundle:
    """Load a bundle into an eval-mode model. Raises BundleError with the reason.

    Before anything is allocated, the header and metadata are checked
    (:mod:`~napari_ghanet.models.bundle_schema`) and the tensors the file declares are
    compared with those the config implies (names, shapes, dtypes, sizes within the
    file). The weights are then read one tensor at a time: floating point only (F16/BF16
    converted to float32, noted in ``ModelBundle.notices``), every value finite.
    Anything a bundle can cause is a :class:`BundleError` with a one-line message.

    Examples
    --------
    >>> bundle = load_bundle(demo_bundle_path())
    >>> bundle.encoder.name, bundle.notices
    ('morphometric', [])
    """
    path = Path(path)
    try:
        return _load_checked(path, device)
    except BundleError:
        raise
    except Exception as e:  # a last guard (MemoryError, RecursionError, ...): one line
        raise BundleError(_unexpected(path, e)) from e


def _load_checked(path: Path, device: str | torch.device) -> ModelBundle:
    from safetensors import safe_open

    header, meta = _read_checked(path)
    notices = _check_tensors(path, header, meta)
    model = build_model_from_metadata(meta["model"])
    expected = model.state_dict()
    state: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for k, ref in expected.items():
                t = f.get_tensor(k)
                if ref.dtype.is_floating_point:
                    t = t.to(ref.dtype)
                    if not bool(torch.isfinite(t).all()):
                        n_bad = int((~torch.isfinite(t)).sum())
                        raise BundleError(
                            f"{path}: the weight tensor {k!r} holds {n_bad} NaN or infinite "
                            "value(s); the model file is damaged or was saved from a diverged "
                            "training run"
                        )
                state[k] = t
    except BundleError:
        raise
    except Exception as e:
        raise BundleError(f"{path}: cannot read the weights ({_unexpected(path, e)})") from e
    model.load_state_dict(state)
    model.to(device).eval()
    return ModelBundle(path=path, model=model, metadata=meta, notices=notices)


def demo_bundle_path() -> Path:
    """Path of the demonstration model shipped with the package."""
    return Path(__file__).resolve().parents[1] / "data" / "demo_model.safetensors"
