"""PerCo rate settings and released pipeline folders, as data (a light module: no torch import).

Facts (sources named per item; no code was taken from them):

* Official PerCo (Careil et al., ICLR 2024): code and weights **unreleased**.
* Rate settings: the paper's Table 2 (``../shared/papers/perco-iclr2024.txt``), spatial
  grid h x w of the hyper-latent index map and codebook size V at 512 x 512. The index
  map is coded uniformly with h*w*ceil(log2 V) bits (paper, Sec. 3.2: "hw log2 V bits").
  Where the paper's printed bpp differs from h*w*ceil(log2 V)/512^2, ``RATES`` keeps the
  paper's name and accepts the exact value rounded to 4 decimals as an alias:

  ======  ======  ===================  =============  ==========================
  grid    V       exact bpp            paper prints   alias accepted
  ======  ======  ===================  =============  ==========================
  64x64   256     0.125                0.1250         -
  64x64   64      0.09375              0.0937         0.0938
  32x32   8192    0.05078125           0.0507 (V      0.0508
                                       printed 8196)
  32x32   256     0.03125              0.0313         -
  16x16   1024    0.009765625          0.0098         -
  8x8     1024    0.00244140625        0.0024         -
  8x8     256     0.001953125          0.0019         0.0020 (0.002)
  ======  ======  ===================  =============  ==========================

  The paper prints codebook size 8196 for 32x32; 8196 would need ceil(log2 8196) = 14 bits
  (0.0547 bpp), so the printed 0.0507 bpp implies V = 8192 (13 bits): bench uses 8192.
  (The community reimplementation's ``src/config.py`` copies 8196 and names the points
  0.1250, 0.0937, 0.0507, 0.0313, 0.0098, 0.0024, 0.0019.)
* Community reimplementation "PerCo (SD)" by Nikolai Körber, github.com/Nikolai10/PerCo,
  Apache-2.0: Stable Diffusion 2.1 (v-prediction) fine-tuned 50k steps on OpenImagesV6;
  released diffusers pipeline folders for 0.1250, 0.0313 and 0.0019 bpp, hosted in a Google
  Drive folder (``RELEASE_URL``, README "Pre-trained Models"). No sha256 is published and a
  Drive folder has no stable per-file URL, so these folders are not entries of
  :mod:`bench.weights` (``WEIGHTS`` is empty): place a downloaded folder at
  ``$BENCH_WEIGHTS/perco/<point>/`` (e.g. ``~/.cache/bench/weights/perco/0.1250/``) or give
  its path in the card param ``pipelines``. bench records the sha256 of every weight file
  of the folder it loads (fingerprint and provenance) and writes an 8-hex digest of them
  into every bitstream.
"""
from __future__ import annotations

from bench.weights import WeightFile

RELEASE_URL = "https://drive.google.com/drive/folders/11xHN61L7GqrJqEQbdtagbKBwMj1KZMf5"
REIMPL_REPO = "https://github.com/Nikolai10/PerCo"
LICENCE = ("Apache-2.0 (community reimplementation Nikolai10/PerCo); built on Stable Diffusion 2.1, "
           "CreativeML Open RAIL++-M")

# point name (as users type it) -> (grid side, codebook size V)
RATES: dict[str, tuple[int, int]] = {
    "0.1250": (64, 256),
    "0.0937": (64, 64),
    "0.0507": (32, 8192),
    "0.0313": (32, 256),
    "0.0098": (16, 1024),
    "0.0024": (8, 1024),
    "0.0019": (8, 256),
}
# other spellings -> the name above (exact h*w*ceil(log2 V)/512^2 rounded to 4 decimals)
ALIASES: dict[str, str] = {"0.0938": "0.0937", "0.0508": "0.0507", "0.0020": "0.0019", "0.002": "0.0019"}

# the reimplementation's released pipeline folders, by point
RELEASED: dict[str, str] = {p: f"{RELEASE_URL} (folder for {p} bpp)" for p in ("0.1250", "0.0313", "0.0019")}

WEIGHTS: tuple[WeightFile, ...] = ()  # no published digests: see the module docstring
