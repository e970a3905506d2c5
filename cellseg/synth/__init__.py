"""Synthetic fluorescence-nuclei scans with ground-truth instance labels.

A scan is built in physical units (µm) and then rendered on the pixel grid.
Every knob of the generator lives in one `SynthParams`; its defaults give the
demo scans, and `sample_params` draws a fresh, widely varied set for each
training sample (`training_pair`).

1. *Placement*: nucleus centres and sizes are drawn by random sequential
   adsorption with a soft hard-core rule (two centres stay at least
   ``f * (r_i + r_j)`` apart). A few isolated nuclei come first (large ``f``),
   then a few dense clusters (small ``f``, nuclei press against each other),
   then the bulk: a nearly jammed packing thinned by a smooth random density
   field, so that crowded and sparse regions alternate. Optionally some nuclei
   are then replaced by a dividing pair (two small, round, tightly touching
   daughters) or by a few small fragments (apoptotic bodies).
2. *Shapes*: each nucleus is an ellipse (2D) or ellipsoid (3D) with random
   orientation and aspect, whose radius is perturbed by low-order angular
   harmonics. Each is computed on a small crop around its bounding box as a
   normalised distance ("score": < 1 inside, 0 at the centre). Where nuclei
   overlap, a pixel goes to the nucleus it is more inside (lowest score), so
   labels touch without overlapping.
3. *Clean-up*: a nucleus split by its neighbours keeps only its largest
   piece; one reduced to less than half of its own size, or smaller than a
   visible minimum, is dropped. Ids are renumbered 1..N in raster order of
   their first pixel.
4. *Rendering*: per-nucleus brightness (some nuclei dim, but never below a
   visibility floor set by the noise), smooth variation within nuclei, dimmer
   edges and seams, dark nucleolus-like spots, chromatin texture (and bright
   chromocentre spots), unlabelled debris specks, Gaussian optical blur (in 3D
   much wider between planes), unlabelled out-of-focus nuclei and glow, an
   uneven smooth background, then Poisson shot noise (optionally with
   electron-multiplication excess noise), camera gain and offset, Gaussian read
   noise and the camera's bit depth.

Brightfield H&E and IHC scans (RGB, nuclei labelled, Beer–Lambert rendering of
stain amounts) come from `synthesize_brightfield` (:mod:`cellseg.synth.brightfield`),
which reuses the placement and shapes above.

Everything is drawn from one ``numpy.random.Generator`` in a fixed order, so
the same arguments give byte-identical arrays. A feature that is switched off
draws nothing, so the defaults reproduce the scans of earlier versions.
"""

from cellseg.synth.brightfield import (
    brightfield_training_pair,
    synthesize_brightfield,
    write_brightfield_scan,
)
from cellseg.synth.brightfield_params import (
    BrightfieldParams,
    BrightfieldSample,
    sample_brightfield_params,
)
from cellseg.synth.params import SynthParams, SynthSample, default_spacing, sample_params
from cellseg.synth.scan import synthesize_sample, synthesize_scan, training_pair
from cellseg.synth.write import write_synthetic_scan

__all__ = [
    "BrightfieldParams",
    "BrightfieldSample",
    "SynthParams",
    "SynthSample",
    "brightfield_training_pair",
    "default_spacing",
    "sample_brightfield_params",
    "sample_params",
    "synthesize_brightfield",
    "synthesize_sample",
    "synthesize_scan",
    "training_pair",
    "write_brightfield_scan",
    "write_synthetic_scan",
]
