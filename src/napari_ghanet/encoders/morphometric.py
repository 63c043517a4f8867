"""``morphometric``: a fixed, weight-free, deterministic 64-d H&E morphology descriptor.

Computed in torch (batched, CPU or GPU) from a patch of RGB in [0, 1]: stain optical
densities, nuclear density and size at three scales, texture and heterogeneity; see
:data:`MORPHOMETRIC_FEATURES` for each feature and its unit. Physical sizes (um) become
pixels with ``target_mpp`` (um/px). The stain vectors are those of
:mod:`napari_ghanet.preprocessing.stain`.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from napari_ghanet.encoders.base import EncoderSpec, PatchEncoder
from napari_ghanet.encoders.registry import register_encoder
from napari_ghanet.errors import EncoderError
from napari_ghanet.preprocessing.stain import EOSIN_OD, HEMATOXYLIN_OD

__all__ = ["EOSIN_OD", "HEMATOXYLIN_OD", "MORPHOMETRIC_FEATURES", "MorphometricEncoder"]

#: Names of the 64 morphometric features, in output order.
#:
#: Definitions (before the fixed standardisation): OD = optical density (log10) of RGB
#: against white; H / E = haematoxylin / eosin concentration from colour deconvolution
#: with :data:`HEMATOXYLIN_OD` / :data:`EOSIN_OD` (OD units); tissue = pixels whose
#: summed RGB OD exceeds 0.25; nuclear pixels = tissue where H smoothed over 0.5 um
#: exceeds 0.5 (or the named threshold); nuclei = local maxima of H smoothed over 1.5 um,
#: at least 4 um apart and above 0.5; blobs = local maxima of the scale-normalised
#: Laplacian of Gaussian of H at sigma 1.5 / 2.25 / 3.25 um (s1 / s2 / s3: nuclei of
#: about 4 / 6.5 / 9 um) whose smoothed H exceeds 0.45. Densities are per 1000 um^2;
#: sub-squares are the 4 x 4 grid of the patch. Blob-scale and texture measures are
#: computed at about 1 um/px.
MORPHOMETRIC_FEATURES: tuple[str, ...] = (
    "tissue_fraction",  # fraction of the patch that is tissue
    "od_mean",  # mean summed RGB OD in tissue
    "od_red",  # mean red-channel OD in tissue
    "od_green",
    "od_blue",
    "h_mean",  # H in tissue: mean, std, 10/50/90/99th percentiles
    "h_std",
    "h_p10",
    "h_p50",
    "h_p90",
    "h_p99",
    "e_mean",  # E in tissue: mean, std, 10/50/90th percentiles
    "e_std",
    "e_p10",
    "e_p50",
    "e_p90",
    "h_share",  # mean H / (mean H + mean E)
    "residual_od",  # mean |OD not explained by H and E| in tissue (pigment, artefacts)
    "dark_fraction",  # tissue fraction with summed OD > 1.5 (folds, ink, dense nuclei)
    "eosin_dominant_fraction",  # tissue fraction where E > H
    "nuclear_fraction_h035",  # tissue fraction with smoothed H > 0.35
    "nuclear_fraction_h050",  # ... > 0.50 (the nuclear pixels)
    "nuclear_fraction_h075",  # ... > 0.75
    "nuclear_fraction_h100",  # ... > 1.00
    "nuclear_fraction_relative",  # ... > median H of the tissue + 0.3 (stain-robust)
    "nuclear_h_mean",  # mean H of nuclear pixels: hyperchromasia
    "nuclear_e_mean",  # mean E of nuclear pixels
    "nuclear_boundary_per_um",  # nuclear boundary px / nuclear px / mpp: ~ 2 / radius
    "chromatin_texture",  # mean local (1.5 um) std of H in nuclear pixels
    "nuclei_density",  # nuclei per 1000 um^2 of tissue
    "nuclei_density_patch",  # nuclei per 1000 um^2 of patch
    "nuclear_area_per_nucleus",  # nuclear area / nuclei count, um^2
    "blob_density_s1",  # blobs per 1000 um^2 of tissue, mean LoG response, mean H
    "blob_contrast_s1",
    "blob_h_s1",
    "blob_density_s2",
    "blob_contrast_s2",
    "blob_h_s2",
    "blob_density_s3",
    "blob_contrast_s3",
    "blob_h_s3",
    "log_energy_ratio",  # mean |LoG| at s1 over that at s3: small versus large structures
    "h_gradient_mean",  # gradient magnitude (OD / um) in tissue: mean, std; of H, E, OD
    "h_gradient_std",
    "e_gradient_mean",
    "e_gradient_std",
    "od_gradient_mean",
    "od_gradient_std",
    "h_local_std_2um",  # mean local standard deviation in 2 um / 8 um windows, H and E
    "h_local_std_8um",
    "e_local_std_2um",
    "e_local_std_8um",
    "h_coherence",  # structure-tensor coherence (0 isotropic, 1 aligned) of H
    "e_coherence",  # ... of E (aligned collagen fibres)
    "h_autocorr_1um",  # autocorrelation of H at 1 um and 4 um shifts, of E at 4 um
    "h_autocorr_4um",
    "e_autocorr_4um",
    "cell_std_h",  # std over the sub-squares of: mean H,
    "cell_std_nuclear_fraction",  # nuclear fraction,
    "cell_std_tissue_fraction",  # tissue fraction,
    "cell_std_nuclei_density",  # nuclei density
    "cell_max_nuclei_density",  # the densest sub-square's nuclei density
    "lumen_fraction",  # patch fraction of non-tissue pixels mostly surrounded by tissue
    "stroma_fraction",  # tissue fraction with E > 0.4 and H < 0.3
)

_TISSUE_OD = 0.25
_NUCLEAR_H = 0.5
_BLOB_H = 0.45
_BLOB_SIGMAS_UM = (1.5, 2.25, 3.25)
_BLOB_LOG_MIN = 0.05
_NUCLEUS_SIGMA_UM = 1.5
_NUCLEUS_SPACING_UM = 4.0
_CPU_CHUNK = 8


_POOLS: dict[int, Any] = {}
_POOLS_LOCK = threading.Lock()


def _cpu_pool(n: int):
    """A shared pool of ``n`` threads that each run torch single-threaded."""
    from concurrent.futures import ThreadPoolExecutor

    with _POOLS_LOCK:
        if n not in _POOLS:
            _POOLS[n] = ThreadPoolExecutor(
                max_workers=n,
                thread_name_prefix="ghanet-morphometric",
                initializer=torch.set_num_threads,
                initargs=(1,),
            )
        return _POOLS[n]


def _gauss_kernel(sigma_px: float) -> tuple[float, ...]:
    """Normalised 1-D Gaussian weights (Python floats: no device round trips)."""
    r = max(1, int(math.ceil(3.0 * sigma_px)))
    k = [math.exp(-0.5 * (t / sigma_px) ** 2) for t in range(-r, r + 1)]
    total = math.fsum(k)
    return tuple(v / total for v in k)


def _odd(n: float) -> int:
    return max(1, int(round(n))) | 1


def _filter1d(x: torch.Tensor, kernel: Sequence[float], dim: int) -> torch.Tensor:
    """Correlate (B, C, H, W) with a 1-D kernel along ``dim`` (-1 or -2), edges replicated.

    A sum of shifted views: several times faster than a one-channel convolution on CPUs,
    and the same arithmetic on every device.
    """
    weights = [float(v) for v in kernel]
    k = len(weights)
    r = k // 2
    if r == 0:
        return x * weights[0]
    n = x.shape[dim]
    first, last = x.narrow(dim, 0, 1), x.narrow(dim, n - 1, 1)
    reps = [-1] * x.ndim
    reps[dim] = r
    xp = torch.cat([first.expand(reps), x, last.expand(reps)], dim=dim)
    out = xp.narrow(dim, 0, n) * weights[0]
    for i in range(1, k):
        out.add_(xp.narrow(dim, i, n), alpha=weights[i])
    return out


def _blur(x: torch.Tensor, kernel: Sequence[float]) -> torch.Tensor:
    return _filter1d(_filter1d(x, kernel, -1), kernel, -2)


def _box(x: torch.Tensor, size: int) -> torch.Tensor:
    k = _odd(size)
    return _blur(x, [1.0 / k] * k)


def _max_filter(x: torch.Tensor, size: int) -> torch.Tensor:
    """Maximum over a size x size window (separable), edges ignored."""
    r = _odd(size) // 2
    for dim in (-1, -2):
        if r == 0:
            break
        pad = (r, r, 0, 0) if dim == -1 else (0, 0, r, r)
        xp = F.pad(x, pad, value=-torch.inf)
        n = x.shape[dim]
        out = xp.narrow(dim, 0, n).clone()
        for i in range(1, 2 * r + 1):
            torch.maximum(out, xp.narrow(dim, i, n), out=out)
        x = out
    return x


def _gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sobel gradients (per pixel) of (B, C, H, W), edges replicated."""
    xp = F.pad(x, (1, 1, 1, 1), mode="replicate")
    dx = (xp[..., :, 2:] - xp[..., :, :-2]) / 2
    dy = (xp[..., 2:, :] - xp[..., :-2, :]) / 2
    gx = (dx[..., :-2, :] + 2 * dx[..., 1:-1, :] + dx[..., 2:, :]) / 4
    gy = (dy[..., :, :-2] + 2 * dy[..., :, 1:-1] + dy[..., :, 2:]) / 4
    return gx, gy


def _laplacian(x: torch.Tensor) -> torch.Tensor:
    xp = F.pad(x, (1, 1, 1, 1), mode="replicate")
    return xp[..., 1:-1, 2:] + xp[..., 1:-1, :-2] + xp[..., 2:, 1:-1] + xp[..., :-2, 1:-1] - 4 * x


def _masked_mean(v: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Mean of v over the weights m (same shape) per batch row: (B,); 0 where m is empty."""
    dims = tuple(range(1, v.ndim))
    return (v * m).sum(dims) / m.sum(dims).clamp_min(1e-6)


def _masked_std(v: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    mu = _masked_mean(v, m).view((-1,) + (1,) * (v.ndim - 1))
    return _masked_mean((v - mu) ** 2, m).clamp_min(0).sqrt()


def _masked_quantiles(v: torch.Tensor, m: torch.Tensor, qs: Sequence[float]) -> torch.Tensor:
    """Quantiles of v where m > 0, per batch row: (B, len(qs)); 0 for an empty mask."""
    flat = v.flatten(1)
    mask = m.flatten(1) > 0
    srt, _ = torch.sort(torch.where(mask, flat, torch.full_like(flat, -torch.inf)), dim=1)
    n = mask.sum(1)
    start = flat.shape[1] - n
    out = []
    for q in qs:
        idx = start + torch.floor(q * (n - 1).clamp_min(0).float()).long()
        val = srt.gather(1, idx.clamp(max=flat.shape[1] - 1).view(-1, 1)).squeeze(1)
        out.append(torch.where(n > 0, val, torch.zeros_like(val)))
    return torch.stack(out, dim=1)


def _autocorr(x: torch.Tensor, m: torch.Tensor, d: int) -> torch.Tensor:
    """Normalised autocorrelation of x over mask m at a shift of d px (mean of x and y)."""
    d = max(1, int(d))
    mu = _masked_mean(x, m).view(-1, 1, 1, 1)
    var = (_masked_std(x, m) ** 2).clamp_min(1e-8)
    c = x - mu
    ax = _masked_mean(c[..., :, :-d] * c[..., :, d:], m[..., :, :-d] * m[..., :, d:])
    ay = _masked_mean(c[..., :-d, :] * c[..., d:, :], m[..., :-d, :] * m[..., d:, :])
    return (ax + ay) / 2 / var


@register_encoder("morphometric")
class MorphometricEncoder(PatchEncoder):
    """Weight-free H&E morphology descriptor: (N, 64), see :data:`MORPHOMETRIC_FEATURES`.

    The patch is converted to optical density against white and unmixed into
    haematoxylin and eosin with fixed stain vectors, so every feature depends on stain
    amounts rather than raw colours, the same way on any scanner and on synthetic H&E.
    Nuclear density is measured three ways (pixels above haematoxylin thresholds, maxima
    of the smoothed haematoxylin, Laplacian-of-Gaussian blobs at three scales), each per
    unit of tissue area. Physical sizes (um) become pixels with ``target_mpp`` (default
    0.5 um/px, the 256 px CLAM patch).

    With ``standardize=True`` (default) each feature is mapped to
    ``(raw - offset) / scale`` with fixed constants (:attr:`feature_offsets`,
    :attr:`feature_scales`: the typical value and spread over tissue patches of real
    and synthetic H&E), so typical values fall in about [-3, 3].

    Batched torch in float32 (autocast disabled), on CPU or GPU; the output depends only
    on the pixels.
    """

    name = "morphometric"
    dim = len(MORPHOMETRIC_FEATURES)
    autocast_ok = False  # thresholds on optical densities need float32
    channels_last_ok = False
    version = 1
    feature_names = MORPHOMETRIC_FEATURES

    def __init__(self, target_mpp: float = 0.5, patch_px: int = 256, standardize: bool = True):
        super().__init__(patch_px=patch_px, target_mpp=target_mpp)
        if not 0.1 <= target_mpp <= 2.0:
            raise EncoderError(f"target_mpp must be in [0.1, 2] um/px, got {target_mpp}")
        self.standardize = bool(standardize)
        od = torch.tensor([HEMATOXYLIN_OD, EOSIN_OD], dtype=torch.float64)
        res = torch.linalg.cross(od[0], od[1])
        stains = torch.cat([od, (res / res.norm()).view(1, 3)], 0)  # rows: H, E, residual
        self.register_buffer("_unmix", torch.linalg.inv(stains).float(), persistent=False)
        # blob-scale measures run at about 1 um/px: `_factor` full-resolution px per px
        self._factor = max(1, int(round(1.0 / target_mpp)))
        self._coarse_mpp = target_mpp * self._factor
        cm = self._coarse_mpp
        self._g_fine = _gauss_kernel(max(0.5 / target_mpp, 0.5))
        self._g_nucleus = _gauss_kernel(_NUCLEUS_SIGMA_UM / cm)
        for i, s in enumerate(_BLOB_SIGMAS_UM):
            setattr(self, f"_g_blob{i}", _gauss_kernel(s / cm))
        self._g_tensor = _gauss_kernel(max(2.0 / cm, 0.7))
        self.register_buffer(
            "_offsets", torch.tensor(_MORPH_OFFSETS, dtype=torch.float32), persistent=False
        )
        self.register_buffer(
            "_scales", torch.tensor(_MORPH_SCALES, dtype=torch.float32), persistent=False
        )

    def weights_description(self) -> str:
        std = "standardised" if self.standardize else "raw"
        return f"none (fixed morphometric descriptor v{self.version}, {std})"

    def spec_extra(self) -> dict[str, Any]:
        return {"version": self.version, "standardize": self.standardize}

    @classmethod
    def spec_kwargs(cls, spec: EncoderSpec) -> dict[str, Any]:
        """Geometry and ``standardize`` (default True when the spec omits it)."""
        kw = super().spec_kwargs(spec)
        if "standardize" in spec.extra:
            kw["standardize"] = bool(spec.extra["standardize"])
        version = spec.extra.get("version", cls.version)
        if version != cls.version:
            raise EncoderError(
                f"the spec asks for morphometric descriptor v{version}; this napari-ghanet "
                f"computes v{cls.version}: re-embed the slides or use a matching version"
            )
        return kw

    @property
    def feature_offsets(self) -> list[float]:
        return self._offsets.tolist()

    @property
    def feature_scales(self) -> list[float]:
        return self._scales.tolist()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dev_type = x.device.type if x.device.type in ("cuda", "cpu") else "cpu"
        with torch.autocast(device_type=dev_type, enabled=False):
            x = x.float()
            if x.device.type == "cpu":
                raw = self._raw_cpu(x)
            else:
                raw = self.raw_features(x)
        if self.standardize:
            return (raw - self._offsets) / self._scales
        return raw

    def _raw_cpu(self, x: torch.Tensor) -> torch.Tensor:
        # Hundreds of small element-wise operations: on CPUs, chunks of a few patches keep
        # the intermediates in cache, and chunks run on single-threaded workers rather
        # than through intra-op threads, whose synchronisation stalls each operation
        # whenever the cores are shared (with patch readers or other processes).
        chunks = x.split(_CPU_CHUNK)
        threads = torch.get_num_threads()
        if len(chunks) == 1 or threads == 1:
            saved = torch.get_num_threads()
            torch.set_num_threads(1)  # per calling thread
            try:
                return torch.cat([self.raw_features(c) for c in chunks])
            finally:
                torch.set_num_threads(saved)
        pool = _cpu_pool(threads)
        grad = torch.is_grad_enabled()
        inference = torch.is_inference_mode_enabled()

        def run(c: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                return self.raw_features(c)

        return torch.cat(list(pool.map(run, chunks)))

    def raw_features(self, x: torch.Tensor) -> torch.Tensor:
        """Unstandardised features of RGB in [0, 1], (B, 3, H, W) -> (B, 64).

        The 64 features in :data:`MORPHOMETRIC_FEATURES` order, computed part by part:
        stain statistics, nuclear pixels, nuclei and blobs, texture, heterogeneity,
        lumens and stroma; each part appends its features to the list and leaves the
        maps the later parts read in ``maps``."""
        maps: dict[str, Any] = {}
        f: list[torch.Tensor] = []
        for part in (_stain_part, _nuclear_pixel_part, _nucleus_part, _texture_part,
                     _heterogeneity_part, _lumen_stroma_part):
            part(self, x, maps, f)
        out = torch.stack(f, dim=1)
        return torch.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


def _stain_part(enc: MorphometricEncoder, x: torch.Tensor, m: dict[str, Any],
                f: list[torch.Tensor]) -> None:
    """Tissue fraction and stain statistics (quantiles from every 4th pixel in x and y:
    4096 samples); the optical densities, stain concentrations and tissue mask."""
    _, _, hh, ww = x.shape
    mpp = enc.target_mpp
    od = -torch.log10(x.clamp(min=1.0 / 255.0))
    conc = torch.einsum("bchw,cs->bshw", od, enc._unmix)
    h, e = conc[:, 0:1], conc[:, 1:2]
    odsum = od.sum(1, keepdim=True)
    tissue = (odsum > _TISSUE_OD).float()
    patch_um2 = hh * ww * mpp * mpp
    tissue_frac = tissue.mean((1, 2, 3))
    tissue_um2 = (tissue_frac * patch_um2).clamp_min(0.02 * patch_um2)
    f.append(tissue_frac)
    f.append(_masked_mean(odsum, tissue))
    f += _masked_mean3(od, tissue)
    h_mean, e_mean = _masked_mean(h, tissue), _masked_mean(e, tissue)
    sub = (..., slice(None, None, 4), slice(None, None, 4))
    hq = _masked_quantiles(h[sub], tissue[sub], (0.1, 0.5, 0.9, 0.99))
    eq = _masked_quantiles(e[sub], tissue[sub], (0.1, 0.5, 0.9))
    f += [h_mean, _masked_std(h, tissue), *hq.unbind(1)]
    f += [e_mean, _masked_std(e, tissue), *eq.unbind(1)]
    hp, ep = h_mean.clamp_min(0), e_mean.clamp_min(0)
    f.append(hp / (hp + ep).clamp_min(1e-6))
    f.append(_masked_mean(conc[:, 2:3].abs(), tissue))
    f.append(_masked_mean((odsum > 1.5).float(), tissue))
    f.append(_masked_mean((e > h).float(), tissue))
    m.update(hh=hh, ww=ww, h=h, e=e, odsum=odsum, tissue=tissue, hq=hq,
             patch_um2=patch_um2, tissue_um2=tissue_um2)


def _nuclear_pixel_part(enc: MorphometricEncoder, x: torch.Tensor, m: dict[str, Any],
                        f: list[torch.Tensor]) -> None:
    """Nuclear pixels at full resolution. Texture is measured on stains smoothed over
    0.5 um, which removes pixel noise and JPEG grain that differ between scanners but
    are not morphology."""
    mpp = enc.target_mpp
    h, e, tissue = m["h"], m["e"], m["tissue"]
    smooth = _blur(torch.cat([h, e, m["odsum"]], 1), enc._g_fine)
    h_fine, e_fine, od_fine = smooth[:, 0:1], smooth[:, 1:2], smooth[:, 2:3]
    for t in (0.35, 0.5, 0.75, 1.0):
        f.append(_masked_mean((h_fine > t).float(), tissue))
    rel = (m["hq"][:, 1] + 0.3).view(-1, 1, 1, 1)
    f.append(_masked_mean((h_fine > rel).float(), tissue))
    nuc = (h_fine > _NUCLEAR_H).float() * tissue
    f.append(_masked_mean(h, nuc))
    f.append(_masked_mean(e, nuc))
    eroded = -F.max_pool2d(-F.pad(nuc, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    nuc_px = nuc.sum((1, 2, 3))
    f.append((nuc - eroded).sum((1, 2, 3)) / nuc_px.clamp_min(1.0) / mpp)
    win = _odd(1.5 / mpp)
    stats = _box(torch.cat([h_fine, h_fine * h_fine], 1), win)
    local_std = (stats[:, 1:2] - stats[:, 0:1] ** 2).clamp_min(0).sqrt()
    f.append(_masked_mean(local_std, nuc))
    m.update(h_fine=h_fine, e_fine=e_fine, od_fine=od_fine, nuc=nuc, nuc_px=nuc_px)


def _nucleus_part(enc: MorphometricEncoder, x: torch.Tensor, m: dict[str, Any],
                  f: list[torch.Tensor]) -> None:
    """Nuclei and blobs at about 1 um/px: densities, sizes, Laplacian-of-Gaussian blobs."""
    mpp, cm, fac = enc.target_mpp, enc._coarse_mpp, enc._factor
    h, e, tissue = m["h"], m["e"], m["tissue"]
    if fac > 1:
        hc = F.avg_pool2d(h, fac)
        ec = F.avg_pool2d(e, fac)
        tc = F.avg_pool2d(tissue, fac)
    else:
        hc, ec, tc = h, e, tissue
    tcm = (tc > 0.5).float()
    hn = _blur(hc, enc._g_nucleus)
    spacing = _odd(_NUCLEUS_SPACING_UM / cm)
    nuclei = ((hn == _max_filter(hn, spacing)) & (hn > _NUCLEAR_H)).float() * tcm
    n_nuclei = nuclei.sum((1, 2, 3))
    tissue_um2 = m["tissue_um2"]
    f.append(n_nuclei / tissue_um2 * 1000.0)
    f.append(n_nuclei / m["patch_um2"] * 1000.0)
    f.append(m["nuc_px"] * mpp * mpp / n_nuclei.clamp_min(1.0))
    logs = []
    for i, s_um in enumerate(_BLOB_SIGMAS_UM):
        s_px = s_um / cm
        hs = _blur(hc, getattr(enc, f"_g_blob{i}"))
        log = -(s_px**2) * _laplacian(hs)
        logs.append(log)
        is_max = log == _max_filter(log, 2 * int(round(s_px * math.sqrt(2))) + 1)
        peaks = (is_max & (log > _BLOB_LOG_MIN) & (hs > _BLOB_H)).float() * tcm
        f.append(peaks.sum((1, 2, 3)) / tissue_um2 * 1000.0)
        f.append(_masked_mean(log, peaks))
        f.append(_masked_mean(hs, peaks))
    f.append(
        _masked_mean(logs[0].abs(), tcm) / _masked_mean(logs[2].abs(), tcm).clamp_min(1e-4)
    )
    m.update(hc=hc, ec=ec, tc=tc, tcm=tcm, nuclei=nuclei)


def _texture_part(enc: MorphometricEncoder, x: torch.Tensor, m: dict[str, Any],
                  f: list[torch.Tensor]) -> None:
    """Texture: gradients, local deviations at 2 and 8 um, orientation coherence and
    autocorrelation of the smoothed stains."""
    mpp, cm = enc.target_mpp, enc._coarse_mpp
    h_fine, e_fine, tissue = m["h_fine"], m["e_fine"], m["tissue"]
    hc, ec, tcm = m["hc"], m["ec"], m["tcm"]
    for ch in (h_fine, e_fine, m["od_fine"]):
        gx, gy = _gradients(ch)
        mag = (gx * gx + gy * gy).sqrt() / mpp
        f += [_masked_mean(mag, tissue), _masked_std(mag, tissue)]
    fine = _box(
        torch.cat([h_fine, e_fine, h_fine * h_fine, e_fine * e_fine], 1), _odd(2.0 / mpp)
    )
    std2 = (fine[:, 2:4] - fine[:, 0:2] ** 2).clamp_min(0).sqrt()
    coarse = _box(torch.cat([hc, ec, hc * hc, ec * ec], 1), _odd(8.0 / cm))
    std8 = (coarse[:, 2:4] - coarse[:, 0:2] ** 2).clamp_min(0).sqrt()
    f += [_masked_mean(std2[:, 0:1], tissue), _masked_mean(std8[:, 0:1], tcm)]
    f += [_masked_mean(std2[:, 1:2], tissue), _masked_mean(std8[:, 1:2], tcm)]
    gx, gy = _gradients(torch.cat([hc, ec], 1))
    jt = _blur(torch.cat([gx * gx, gy * gy, gx * gy], 1), enc._g_tensor)
    for c in range(2):
        jxx, jyy, jxy = jt[:, 0 + c : 1 + c], jt[:, 2 + c : 3 + c], jt[:, 4 + c : 5 + c]
        tr = jxx + jyy
        coh = ((jxx - jyy) ** 2 + 4 * jxy * jxy).sqrt() / tr.clamp_min(1e-8)
        f.append(_masked_mean(coh, tcm * tr))
    f.append(_autocorr(h_fine, tissue, round(1.0 / mpp)))
    f.append(_autocorr(h_fine, tissue, round(4.0 / mpp)))
    f.append(_autocorr(e_fine, tissue, round(4.0 / mpp)))


def _heterogeneity_part(enc: MorphometricEncoder, x: torch.Tensor, m: dict[str, Any],
                        f: list[torch.Tensor]) -> None:
    """Heterogeneity over 4 x 4 sub-squares: stain, nuclear pixels, tissue, nuclei."""
    mpp, fac = enc.target_mpp, enc._factor
    hh, ww, tissue = m["hh"], m["ww"], m["tissue"]
    cell = (max(1, hh // 4), max(1, ww // 4))
    cell_t = F.avg_pool2d(tissue, cell)
    cell_h = F.avg_pool2d(m["h"] * tissue, cell) / cell_t.clamp_min(1e-3)
    cell_n = F.avg_pool2d(m["nuc"], cell) / cell_t.clamp_min(1e-3)
    ccell = (max(1, cell[0] // fac), max(1, cell[1] // fac))
    cell_area = cell[0] * cell[1] * mpp * mpp
    cell_nuclei = F.avg_pool2d(m["nuclei"], ccell) * (ccell[0] * ccell[1])
    cell_nuclei = cell_nuclei[..., : cell_t.shape[-2], : cell_t.shape[-1]]
    cell_d = cell_nuclei / (cell_t * cell_area).clamp_min(0.05 * cell_area) * 1000.0
    has = (cell_t > 0.05).float()
    f.append(_masked_std(cell_h, has))
    f.append(_masked_std(cell_n, has))
    f.append(cell_t.flatten(1).std(1, correction=0))
    f.append(_masked_std(cell_d, has))
    f.append((cell_d * has).flatten(1).amax(1))


def _lumen_stroma_part(enc: MorphometricEncoder, x: torch.Tensor, m: dict[str, Any],
                       f: list[torch.Tensor]) -> None:
    """Lumens (glass surrounded by tissue) and stroma (eosin without haematoxylin)."""
    cm = enc._coarse_mpp
    tc, tcm = m["tc"], m["tcm"]
    around = _box(tc, _odd(8.0 / cm))
    f.append(((1 - tcm) * (around > 0.5).float()).mean((1, 2, 3)))
    f.append(_masked_mean(((m["e"] > 0.4) & (m["h"] < 0.3)).float(), m["tissue"]))


def _masked_mean3(od: torch.Tensor, m: torch.Tensor) -> list[torch.Tensor]:
    """Per-channel masked means of (B, 3, H, W) over (B, 1, H, W): three (B,) tensors."""
    s = (od * m).sum((2, 3)) / m.sum((2, 3)).clamp_min(1e-6)
    return list(s.unbind(1))


# Fixed standardisation of the morphometric features (raw -> (raw - offset) / scale):
# the typical value (mean of per-slide medians) and the spread (within and between
# slides) of each feature over tissue patches of the real Aperio H&E slide
# cmu_small_region.svs and four synthetic H&E slides of activity 0, 0.3, 0.6 and 1.
# fmt: off
_MORPH_OFFSETS: tuple[float, ...] = (
    0.6709, 1.219, 0.3177, 0.5565, 0.3456, 0.2617, 0.2604, 0.03996,
    0.1572, 0.6324, 1.073, 0.5083, 0.2329, 0.2114, 0.483, 0.8332,
    0.321, 0.01208, 0.2206, 0.8835, 0.2414, 0.1821, 0.1121, 0.05268,
    0.1348, 0.813, 0.8423, 0.8509, 0.08726, 3.618, 2.46, 45.38,
    6.449, 0.3136, 0.7017, 3.102, 0.3823, 0.652, 1.563, 0.3647,
    0.6158, 0.8048, 0.08392, 0.1073, 0.1209, 0.09331, 0.3081, 0.2799,
    0.05927, 0.1501, 0.08374, 0.1928, 0.5634, 0.6358, 0.9367, 0.4229,
    0.359, 0.08924, 0.0867, 0.15, 2.039, 7.656, 0.08581, 0.3662,
)
_MORPH_SCALES: tuple[float, ...] = (
    0.1904, 0.5085, 0.191, 0.198, 0.1203, 0.2081, 0.09515, 0.0641,
    0.2155, 0.3879, 0.2666, 0.1154, 0.04419, 0.08774, 0.119, 0.1665,
    0.1137, 0.01331, 0.2044, 0.1457, 0.2351, 0.2016, 0.1735, 0.1086,
    0.08864, 0.1057, 0.09753, 0.3935, 0.02822, 2.126, 1.961, 26.79,
    5.286, 0.09238, 0.1699, 2.853, 0.1122, 0.1923, 1.96, 0.2539,
    0.2452, 0.1201, 0.03966, 0.02211, 0.02153, 0.0125, 0.06037, 0.04958,
    0.02795, 0.0764, 0.01364, 0.02255, 0.06904, 0.09081, 0.04782, 0.1335,
    0.1346, 0.06347, 0.06335, 0.09939, 1.009, 4.56, 0.05824, 0.1665,
)
# fmt: on
