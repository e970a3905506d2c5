"""Rendering a brightfield scan: tissue layout, nuclei, stain amounts, colour, scanner.

See :mod:`cellseg.synth.brightfield` for what is drawn, in which order.
"""

from __future__ import annotations

import math

import imagecodecs
import numpy as np
from scipy import ndimage as ndi

from cellseg.stain import REFERENCE, from_optical_density
from cellseg.synth.brightfield_params import (
    LYMPHOCYTE,
    STROMAL,
    TUMOUR,
    BrightfieldParams,
    BrightfieldSample,
)
from cellseg.synth.fields import _smooth_field, _smooth_field_at, _uniform_in_ball
from cellseg.synth.params import SynthParams
from cellseg.synth.placement import _Placement
from cellseg.synth.render import _filtered_noise_std, _splat
from cellseg.synth.shapes import _clean_labels, _draw_nuclei

_ELONGATION = {TUMOUR: 1.0, LYMPHOCYTE: 0.3, STROMAL: 3.0}  # shape scale per kind
_STAIN_NAMES = {"he": ("hematoxylin", "eosin"), "hdab": ("hematoxylin", "dab")}
_QUANTILE_SAMPLES = 250_000
#: OD direction of red blood cells: eosin and haemoglobin, redder than eosin alone.
_RBC_OD = np.array([0.06, 0.8, 0.6]) / np.linalg.norm([0.06, 0.8, 0.6])


# --------------------------------------------------------------------------- layout


def _synthesize(
    shape: tuple[int, int], spacing: np.ndarray, p: BrightfieldParams, rng: np.random.Generator
) -> BrightfieldSample:
    px = float(np.sqrt(np.prod(spacing)))
    tissue, nest, lymphoid, fat_region = _regions(rng, shape, spacing, p)
    lumen, lumen_wall = _lumens(rng, shape, spacing, p, tissue, nest)
    fat_wall = _fat_walls(rng, shape, spacing, p, fat_region)
    stroma = tissue & ~nest & ~lymphoid & ~fat_region
    allowed = tissue & ~lumen & ~fat_region

    # Nuclei: one population after another, each in its own region.
    populations = [
        (TUMOUR, p.tumour_diameter_um, p.tumour_density, nest),
        (LYMPHOCYTE, p.lymphocyte_diameter_um, p.lymphocyte_density, lymphoid),
        (STROMAL, p.stromal_diameter_um, p.stromal_density, stroma),
        (LYMPHOCYTE, p.lymphocyte_diameter_um, p.stromal_lymphocytes, stroma),
    ]
    centres, radii, kind = _place_populations(rng, spacing, p, populations, allowed)
    shape_params = SynthParams(
        aspect_sigma=p.aspect_sigma,
        aspect_max=p.aspect_max,
        irregularity=p.irregularity,
        max_perturbation=p.max_perturbation,
    )
    scale = np.array([_ELONGATION[k] for k in kind.tolist()], dtype=np.float64)
    score, raw, own_size = _draw_nuclei(rng, shape, spacing, centres, radii, shape_params, scale)
    raw[~allowed] = 0  # lumens, fat and glass cut the nuclei
    min_size = max(8, int(round(math.pi * 1.5**2 / px**2)))
    labels, kept = _clean_labels(raw, own_size, min_size, 0.5)
    del raw
    kind, centres, radii = kind[kept], centres[kept], radii[kept]
    n = int(kept.size)
    nuclei = labels > 0

    # Haematoxylin of the nuclei, eosin of the nucleoli.
    hema, nucleoli = _nuclear_stain(rng, labels, score, spacing, p, kind, centres, radii)
    del score

    # Cells: each pixel's nearest nucleus, up to a reach that depends on the kind.
    dist, index = ndi.distance_transform_edt(~nuclei, sampling=spacing, return_indices=True)
    owner = labels[index[0], index[1]]
    del index
    reach = np.where(kind == TUMOUR, p.cytoplasm_reach, 0.3) * radii
    reach_lut = np.concatenate([[0.0], reach]).astype(np.float32)
    # Nests are packed with tumour cells; elsewhere a cell reaches a little past its nucleus.
    cell = ((dist <= reach_lut[owner]) | nest) & allowed
    del dist
    cytoplasm = cell & ~nuclei
    membrane = _borders(owner, cell) & cytoplasm
    in_tumour = np.concatenate([[False], kind == TUMOUR])[owner]

    # Eosin: cytoplasm, cell borders, stroma fibres, faint background; lumens and fat empty.
    level = np.concatenate([[0.0], rng.uniform(*p.eosin_cytoplasm, n)]).astype(np.float32)
    level[1:][kind != TUMOUR] *= 0.5
    variation = _smooth_field(rng, shape, spacing, 2.0 * p.region_cell_um / 3.0, coarse=True)
    variation = np.clip(1.0 + 0.2 * variation, 0.5, None)
    cyto_amount = level[owner] * variation
    eosin = np.where(cytoplasm, cyto_amount, 0.0).astype(np.float32)
    eosin[membrane & in_tumour] *= np.float32(1.0 + p.membrane)
    eosin[nuclei] = 0.6 * cyto_amount[nuclei]
    fibres = _fibres(rng, shape, spacing, p, stroma)
    stroma_level = float(rng.uniform(*p.eosin_stroma))
    ecm = stroma & ~cell
    eosin[ecm] += (stroma_level * (0.3 + 0.7 * fibres[ecm]) * variation[ecm]).astype(np.float32)
    del fibres
    eosin *= _mottle(rng, shape, spacing, p.texture)
    hema[cytoplasm] += (rng.uniform(*p.hematoxylin_cytoplasm) * variation[cytoplasm]).astype(
        np.float32
    )
    eosin[lymphoid & ~cell] += np.float32(0.3 * stroma_level)
    eosin += np.float32(rng.uniform(*p.eosin_background)) * tissue
    eosin += nucleoli
    del nucleoli
    wall = (lumen_wall | fat_wall) & tissue
    eosin[wall] = np.maximum(eosin[wall], np.float32(0.8 * stroma_level))
    eosin[lumen | (fat_region & ~fat_wall) | ~tissue] = 0.0
    hema += np.float32(0.25 * rng.uniform(*p.eosin_background)) * (tissue & ~lumen)
    rbc = _red_blood_cells(rng, shape, spacing, p, tissue & ~nuclei, stroma | lumen)

    # IHC: a paler counterstain, no eosin, DAB in a fraction of the cells.
    positive = np.zeros(n, dtype=bool)
    dab_amount = np.zeros(n, dtype=np.float32)
    if p.stain == "hdab":
        positive = rng.random(n) < p.dab_fraction
        dab_amount[positive] = rng.uniform(*p.dab_strength, int(positive.sum()))
        hema *= np.float32(0.6)
        hema += np.float32(0.3) * eosin * ~nuclei
        lut = np.concatenate([[0.0], dab_amount]).astype(np.float32)
        if p.dab_pattern == "nuclear":
            second = lut[labels] * (hema > 0)
            hema[second > 0] *= np.float32(0.5)
        elif p.dab_pattern == "cytoplasm":
            second = lut[owner] * (0.7 * cytoplasm + 0.5 * membrane)
        else:
            second = lut[owner] * (membrane + 0.1 * cytoplasm)
        second = second.astype(np.float32)
        rbc *= np.float32(0.3)  # unstained red cells: a faint tint
    else:
        second = eosin
    del owner, eosin

    # Colour: stain vectors, section thickness, blur, tile seams, noise, JPEG.
    vectors = _stain_vectors(rng, p)
    strength = rng.uniform(*p.stain_strength, 2)
    thickness = _smooth_field(rng, shape, spacing, p.region_cell_um, coarse=True)
    thickness = np.clip(1.0 + 0.12 * thickness, 0.6, None)
    od = np.zeros(shape + (3,), dtype=np.float32)
    layers = zip((hema, second, rbc), (*vectors[:2], _RBC_OD), (*strength, 1.0), strict=True)
    for amount, vector, factor in layers:
        od += (amount * thickness)[..., None] * (factor * vector).astype(np.float32)
    del hema, second, rbc, thickness
    sigma = float(p.blur_um) / spacing
    if p.blur_um > 0:
        od = ndi.gaussian_filter(od, (float(sigma[0]), float(sigma[1]), 0.0), truncate=3.0)
    if p.seam_tile_px > 0 and p.seam_strength > 0:
        od += _seams(rng, shape, p)
    image = from_optical_density(od, p.background)
    del od
    if p.noise > 0:
        noisy = image + rng.normal(0.0, p.noise, image.shape).astype(np.float32)
        image = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    if p.jpeg_quality is not None:
        image = imagecodecs.jpeg8_decode(imagecodecs.jpeg8_encode(image, level=p.jpeg_quality))
    stains = {
        "kind": p.stain,
        "names": list(_STAIN_NAMES[p.stain]),
        "vectors": [[round(float(x), 6) for x in row] for row in vectors],
        "background": [float(v) for v in p.background],
    }
    return BrightfieldSample(
        image=np.ascontiguousarray(image, dtype=np.uint8),
        labels=labels,
        spacing=(float(spacing[0]), float(spacing[1])),
        params=p,
        stains=stains,
        cell_kind=kind.astype(np.int8),
        dab_positive=(np.flatnonzero(positive) + 1).astype(np.uint32),
        dab_amount=dab_amount,
        tissue=tissue,
    )


def _quantile(field: np.ndarray, where: np.ndarray, q: float) -> float:
    """Quantile ``q`` of the field's values in `where` (from a strided subsample)."""
    values = field[where]
    stride = max(1, values.size // _QUANTILE_SAMPLES)
    return float(np.quantile(values[::stride], min(max(q, 0.0), 1.0))) if values.size else 0.0


def _regions(
    rng: np.random.Generator, shape: tuple[int, int], spacing: np.ndarray, p: BrightfieldParams
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Masks of tissue, nests, lymphoid areas and fat (the rest of tissue is stroma)."""
    # Thresholded fields are computed at every pixel (coarse ones would give polygons).
    field = _smooth_field(rng, shape, spacing, p.tissue_cell_um)
    if p.slide_layout:
        # One piece in the middle: a bowl-shaped envelope under the field.
        rows = np.linspace(-1.0, 1.0, shape[0], dtype=np.float32)[:, None]
        cols = np.linspace(-1.0, 1.0, shape[1], dtype=np.float32)[None, :]
        field -= np.float32(4.0) * (rows * rows + cols * cols)
        # ... falling steeply near the edges, so the outline curves away from them.
        field -= np.float32(80.0) * (np.maximum(np.abs(rows) - 0.7, 0.0) ** 2)
        field -= np.float32(80.0) * (np.maximum(np.abs(cols) - 0.7, 0.0) ** 2)
        # A margin of glass along every edge: the tissue never touches it.
        margin = [max(4, n // 12) for n in shape]
        field[: margin[0]] = field[-margin[0] :] = -np.inf
        field[:, : margin[1]] = field[:, -margin[1] :] = -np.inf
    everywhere = np.ones(shape, dtype=bool)
    if p.tissue_fraction >= 1.0:
        tissue = everywhere
    elif p.tissue_fraction <= 0.0:
        tissue = ~everywhere
    else:
        tissue = field >= _quantile(field, everywhere, 1.0 - p.tissue_fraction)
    del field
    masks = []
    left = tissue.copy()
    n_tissue = max(int(np.count_nonzero(tissue)), 1)
    for share, cell_um in (
        (p.nest_fraction, p.region_cell_um),
        (p.lymphoid_fraction, 0.6 * p.region_cell_um),
        (p.fat_fraction, p.region_cell_um),
    ):
        field = _smooth_field(rng, shape, spacing, cell_um)
        n_left = max(int(np.count_nonzero(left)), 1)
        if share <= 0:
            mask = np.zeros(shape, dtype=bool)
        else:
            mask = left & (field >= _quantile(field, left, 1.0 - share * n_tissue / n_left))
        left &= ~mask
        masks.append(mask)
    return tissue, masks[0], masks[1], masks[2]


def _lumens(
    rng: np.random.Generator,
    shape: tuple[int, int],
    spacing: np.ndarray,
    p: BrightfieldParams,
    tissue: np.ndarray,
    nest: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Empty lumens (mostly in nests) and their thin walls."""
    area = float(np.count_nonzero(tissue) * np.prod(spacing))
    count = int(rng.poisson(p.lumen_density * area / 1e4)) if p.lumen_density > 0 else 0
    empty = np.zeros(shape, dtype=bool)
    if count == 0:
        return empty, empty
    where = nest if nest.any() else tissue
    pixels = np.flatnonzero(where)
    in_nest = rng.random(count) < 0.8
    pick = np.where(in_nest, rng.integers(0, pixels.size, count), -1)
    centres = np.column_stack(np.unravel_index(pixels[pick], shape)).astype(np.float64)
    others = np.flatnonzero(tissue)
    stray = np.column_stack(np.unravel_index(others[rng.integers(0, others.size, count)], shape))
    centres = np.where(in_nest[:, None], centres, stray) * spacing
    radii = 0.5 * rng.uniform(*p.lumen_diameter_um, count)
    shape_params = SynthParams(aspect_sigma=0.35, aspect_max=0.8, irregularity=0.12)
    score, _, _ = _draw_nuclei(rng, shape, spacing, centres, radii, shape_params)
    lumen = (score < 1.0) & tissue
    wall = ndi.distance_transform_edt(~lumen, sampling=spacing) <= 1.0
    return lumen, wall & ~lumen


def _fat_walls(
    rng: np.random.Generator,
    shape: tuple[int, int],
    spacing: np.ndarray,
    p: BrightfieldParams,
    fat: np.ndarray,
) -> np.ndarray:
    """Thin walls between the large empty cells of fat (a jittered-grid Voronoi mesh)."""
    if not fat.any():
        return np.zeros(shape, dtype=bool)
    extent = np.asarray(shape) * spacing
    grid = [np.arange(0.0, e + p.fat_cell_um, p.fat_cell_um) for e in extent]
    points = np.stack(np.meshgrid(*grid, indexing="ij"), axis=-1).reshape(-1, 2)
    points += rng.uniform(-0.35, 0.35, points.shape) * p.fat_cell_um
    index = np.clip(np.rint(points / spacing).astype(np.int64), 0, np.asarray(shape) - 1)
    seeds = np.zeros(shape, dtype=np.int32)
    seeds[index[:, 0], index[:, 1]] = np.arange(1, index.shape[0] + 1)
    nearest = ndi.distance_transform_edt(seeds == 0, return_indices=True, return_distances=False)
    owner = seeds[nearest[0], nearest[1]]
    return _borders(owner, fat) & fat


def _borders(owner: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Pixels whose 4-neighbour has another owner or lies outside `inside`."""
    edge = np.zeros(owner.shape, dtype=bool)
    for axis in (0, 1):
        a = np.moveaxis(owner, axis, 0)
        m = np.moveaxis(inside, axis, 0)
        e = np.moveaxis(edge, axis, 0)
        step = (a[1:] != a[:-1]) | (m[1:] != m[:-1])
        e[1:] |= step
        e[:-1] |= step
    return edge


def _place_populations(
    rng: np.random.Generator,
    spacing: np.ndarray,
    p: BrightfieldParams,
    populations: list,
    allowed: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random sequential adsorption of each population in its region, in turn."""
    shape = np.asarray(allowed.shape)
    extent = shape * spacing
    r_max = 0.5 * max(float(d[1]) for _, d, _, _ in populations)
    placed = _Placement(2, r_max)
    kinds: list[np.ndarray] = []
    for kind, (d_lo, d_hi), density, region in populations:
        where = region & allowed
        area = float(np.count_nonzero(where) * np.prod(spacing))
        mean_area = math.pi / 4.0 * (d_lo * d_lo + d_lo * d_hi + d_hi * d_hi) / 3.0
        goal = int(round(density * area / mean_area))
        before = placed.count
        for _ in range(8):
            missing = goal - (placed.count - before)
            if missing <= 0:
                break
            points = rng.uniform(0.0, 1.0, (3 * missing + 16, 2)) * extent
            index = np.minimum((points / spacing).astype(np.int64), shape - 1)
            points = points[where[index[:, 0], index[:, 1]]]
            radii = 0.5 * rng.uniform(d_lo, d_hi, points.shape[0])
            placed.add(points, radii, p.gap, np.array([missing]))
        kinds.append(np.full(placed.count - before, kind, dtype=np.int8))
    kind = np.concatenate(kinds) if kinds else np.zeros(0, dtype=np.int8)
    return placed.points, placed.radii, kind


# --------------------------------------------------------------------------- stains


def _nuclear_stain(
    rng: np.random.Generator,
    labels: np.ndarray,
    score: np.ndarray,
    spacing: np.ndarray,
    p: BrightfieldParams,
    kind: np.ndarray,
    centres: np.ndarray,
    radii: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Haematoxylin of the nuclei and eosin of their nucleoli (float32 images)."""
    n = kind.size
    ranges = {
        TUMOUR: p.hematoxylin_tumour,
        LYMPHOCYTE: p.hematoxylin_lymphocyte,
        STROMAL: p.hematoxylin_stromal,
    }
    level = np.zeros(n)
    for k, (lo, hi) in ranges.items():
        level[kind == k] = rng.uniform(lo, hi, int(np.count_nonzero(kind == k)))
    vesicular = (kind == TUMOUR) & (rng.random(n) < p.vesicular_fraction)
    rim = rng.uniform(*p.rim, n) + 0.8 * vesicular
    chromatin = rng.uniform(*p.chromatin, n) * np.where(kind == LYMPHOCYTE, 0.6, 1.0)
    level[vesicular] *= 0.8

    def lut(values: np.ndarray) -> np.ndarray:
        return np.concatenate([[0.0], values]).astype(np.float32)[labels]

    s = np.where(labels > 0, score, 1.0).astype(np.float32)
    s4 = s * s
    s4 *= s4
    profile = np.float32(1.0) + lut(rim) * s4
    pale = lut(vesicular.astype(np.float64)) > 0
    profile[pale] *= 0.3 + 0.7 * s[pale] ** 3
    # Granular chromatin: log-normal texture from noise at two grain sizes.
    grain = np.zeros(labels.shape, dtype=np.float32)
    for size, weight in ((p.chromatin_um, 0.8), (2.5 * p.chromatin_um, 0.6)):
        sigma = tuple(float(size / sp) for sp in spacing)
        noise = ndi.gaussian_filter(
            rng.standard_normal(labels.shape, dtype=np.float32), sigma, truncate=3.0
        )
        grain += np.float32(weight / _filtered_noise_std(sigma, 3.0)) * noise
    strength = lut(chromatin)
    texture = np.exp(strength * grain - 0.5 * strength * strength)
    hema = lut(level) * profile * texture
    hema[labels == 0] = 0.0
    # Nucleoli: dark purple-red spots near the centre of tumour nuclei.
    mean = np.where(kind == TUMOUR, p.nucleoli_count + 1.5 * vesicular, 0.0)
    owner = np.repeat(np.arange(n), rng.poisson(mean))
    points = centres[owner] + _uniform_in_ball(rng, owner.size, 2) * (0.4 * radii[owner, None])
    spots = _splat(labels.shape, spacing, points, rng.uniform(0.6, 1.0, owner.size), p.nucleolus_um)
    spots *= labels > 0
    hema += spots * np.float32(0.5) * lut(np.maximum(level, 0.4))
    return hema, spots * np.float32(0.5)


def _fibres(
    rng: np.random.Generator,
    shape: tuple[int, int],
    spacing: np.ndarray,
    p: BrightfieldParams,
    stroma: np.ndarray,
) -> np.ndarray:
    """Wavy collagen fibres over the stroma, float32 in [0, 1]: smooth polylines whose
    direction follows a smooth orientation field with a sinusoidal wave."""
    extent = np.asarray(shape) * spacing
    area = float(np.count_nonzero(stroma) * np.prod(spacing))
    length_um = 40.0
    count = int(rng.poisson(area / (p.fibre_spacing_um * length_um)))
    if count == 0:
        return np.zeros(shape, dtype=np.float32)
    start = rng.uniform(0.0, 1.0, (count, 2)) * extent
    angle = math.pi * _smooth_field_at(rng, start, extent, 3.0 * length_um)
    angle += rng.normal(0.0, 0.15, count)
    length = rng.uniform(0.5, 1.5, count) * length_um
    wavelength = rng.uniform(6.0, 20.0, count)
    phase = rng.uniform(0.0, 2 * math.pi, count)
    weight = rng.uniform(0.5, 1.0, count)
    step = 0.5 * min(float(spacing.min()), 0.5 * p.fibre_width_um)
    steps = np.maximum(2, (length / step).astype(np.int64))
    owner = np.repeat(np.arange(count), steps)
    t = (np.arange(owner.size) - np.repeat(np.cumsum(steps) - steps, steps)) * step
    theta = angle[owner] + p.fibre_waviness * np.sin(
        2 * math.pi * t / wavelength[owner] + phase[owner]
    )
    delta = step * np.column_stack([np.sin(theta), np.cos(theta)])
    # Positions: the running sum of the steps within each fibre.
    path = np.cumsum(delta, axis=0)
    first = np.cumsum(steps) - steps
    path -= np.repeat(path[first] - delta[first], steps, axis=0)
    points = start[owner] + path
    sigma_um = 0.5 * p.fibre_width_um
    # A dense line of spots: its cross-section peaks at about peak * sqrt(2 pi) sigma / step.
    peak = weight[owner] * step / (math.sqrt(2 * math.pi) * sigma_um)
    fibres = _splat(shape, spacing, points, peak, sigma_um)
    return np.clip(fibres, 0.0, 1.0)


def _red_blood_cells(
    rng: np.random.Generator,
    shape: tuple[int, int],
    spacing: np.ndarray,
    p: BrightfieldParams,
    free: np.ndarray,
    where: np.ndarray,
) -> np.ndarray:
    """Amount of red blood cells (discs with a paler centre), half of them in clumps."""
    area = float(np.count_nonzero(where) * np.prod(spacing))
    count = int(rng.poisson(p.rbc_density * area / 1e4)) if p.rbc_density > 0 else 0
    if count == 0 or not where.any():
        return np.zeros(shape, dtype=np.float32)
    pixels = np.flatnonzero(where)
    n_clumps = max(1, count // 12)
    clump = np.column_stack(np.unravel_index(pixels[rng.integers(0, pixels.size, n_clumps)], shape))
    clumped = rng.random(count) < 0.5
    scattered = np.column_stack(
        np.unravel_index(pixels[rng.integers(0, pixels.size, count)], shape)
    )
    spread = rng.normal(0.0, 6.0, (count, 2))
    centres = np.where(
        clumped[:, None],
        clump[rng.integers(0, n_clumps, count)] * spacing + spread,
        scattered * spacing,
    )
    radii = 0.5 * rng.uniform(*p.rbc_diameter_um, count)
    shape_params = SynthParams(aspect_sigma=0.08, aspect_max=0.25, irregularity=0.02)
    score, raw, _ = _draw_nuclei(rng, shape, spacing, centres, radii, shape_params)
    level = np.concatenate([[0.0], rng.uniform(*p.eosin_rbc, count)]).astype(np.float32)
    amount = level[raw] * (np.float32(0.65) + np.float32(0.35) * score * score)
    amount[~free] = 0.0
    return amount


def _mottle(
    rng: np.random.Generator, shape: tuple[int, int], spacing: np.ndarray, strength: float
) -> np.ndarray:
    """A fine log-normal texture (mean about 1) of grains about 1 µm across."""
    sigma = tuple(float(0.6 / sp) for sp in spacing)
    noise = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma, truncate=3.0)
    noise *= np.float32(strength / _filtered_noise_std(sigma, 3.0))
    return np.exp(noise - np.float32(0.5 * strength * strength))


def _stain_vectors(rng: np.random.Generator, p: BrightfieldParams) -> np.ndarray:
    """The reference vectors of the kind, each turned by up to ``stain_angle_deg`` in a
    random direction (kept non-negative), with the residual normal to both."""
    rows = []
    for vector in REFERENCE[p.stain][:2]:
        vector = np.asarray(vector, dtype=np.float64)
        other = rng.standard_normal(3)
        other -= other.dot(vector) * vector
        other /= max(float(np.linalg.norm(other)), 1e-12)
        angle = math.radians(rng.uniform(0.0, p.stain_angle_deg))
        turned = np.maximum(math.cos(angle) * vector + math.sin(angle) * other, 0.01)
        rows.append(turned / np.linalg.norm(turned))
    residual = np.abs(np.cross(rows[0], rows[1]))
    rows.append(residual / max(float(np.linalg.norm(residual)), 1e-12))
    return np.stack(rows)


def _seams(rng: np.random.Generator, shape: tuple[int, int], p: BrightfieldParams) -> np.ndarray:
    """Scanner tile seams: a brightness and colour step (OD) per tile of a shifted grid."""
    tile = int(p.seam_tile_px)
    shift = rng.integers(0, tile, 2)
    n_rows = (shape[0] + int(shift[0])) // tile + 1
    n_cols = (shape[1] + int(shift[1])) // tile + 1
    steps = rng.normal(0.0, p.seam_strength, (n_rows, n_cols, 1))
    steps = steps + rng.normal(0.0, 0.5 * p.seam_strength, (n_rows, n_cols, 3))
    rows = (np.arange(shape[0]) + shift[0]) // tile
    cols = (np.arange(shape[1]) + shift[1]) // tile
    return steps.astype(np.float32)[rows[:, None], cols[None, :]]
