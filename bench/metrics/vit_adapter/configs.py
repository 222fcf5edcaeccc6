"""The released ViT-Adapter COCO-Stuff-164k segmenters, as data (no torch import).

Source: czczup/ViT-Adapter ``segmentation/configs/coco_stuff164k/`` (configs and README table).
All three are ViT-Adapter-L on a BEiT-L-sized backbone (patch 16, dim 1024, 24 blocks, 16 heads,
relative position bias, no absolute position embedding, layer scale), with the adapter settings
``conv_inplane=64, n_points=4, deform_num_heads=16, cffn_ratio=0.25, deform_ratio=0.5,
interaction_indexes=[[0,5],[6,11],[12,17],[18,23]]``; they differ in the head and pre-training:

=======================================  ==========  =====  ================  =====================
variant                                  head        crop   mIoU SS / MS      release file
=======================================  ==========  =====  ================  =====================
``upernet-beit-l-cocostuff164k``         UperNet     640    50.5 / 50.7       v0.2.6 ``.pth.tar``
``mask2former-beit-l-cocostuff164k``     Mask2Former 896    51.7 / 52.0       v0.2.6 ``.zip``
``mask2former-beitv2-l-cocostuff164k``   Mask2Former 896    52.3 / -          v0.3.1 ``.zip``
=======================================  ==========  =====  ================  =====================

Which one PerCo used is not stated (Sec. 4.1: "the pretrained ViT-Adapter segmentation network
(Chen et al., 2023), which was trained on the COCO train split"). Its Table 1 gives mIoU 51.04 for
the LDM autoencoder's near-lossless reconstructions (LPIPS 0.07) of its 512x512 COCO images: above
UperNet's published 50.5 and below Mask2Former-BEiT's 51.7. Reconstructions rarely gain mIoU over
the originals, so a score above UperNet's leans towards Mask2Former-BEiT-L; but PerCo's images
and resolution (512x512) are not the published ones (full-size val2017), so it does not decide. All three are implemented; UperNet stays the default (the
smallest and fastest, and the registry entry every earlier ``miou_cocostuff`` row names), choose
another with ``BENCH_VIT_ADAPTER_MODEL``. No released checkpoint could be run here (no download):
the ports are checked on random weights (key names, shapes, strict loading), not against the
published scores; ``python -m bench.metrics.vit_adapter.reproduce`` is that check.

``tiny`` and ``tiny-mask2former`` are test-size models of the same structures (no released weights:
random or a file), for fast checks.

Test pipeline of the UperNet config (what :mod:`.model` reproduces): RGB, ``Resize`` to
``img_scale=(2560, 640)`` with ``keep_ratio`` (scale = min(2560/long side, 640/short side), sizes
rounded half up, bilinear), ``ResizeToMultiple(32)`` (ceil), ``Normalize`` ImageNet mean/std on
0..255, ``slide`` inference with 640x640 crops and stride 426 (logits averaged where windows
overlap), logits resized bilinearly to the input size, argmax. No flip, single scale. The
Mask2Former configs are the same with ``img_scale=(3584, 896)``, 896x896 crops, stride 512, and
per window the semantic scores of :func:`~.mask2former.semantic_inference` in place of logits
(the segmentor's final softmax over classes does not change the argmax). A 512x512 image becomes
one 640x640 (UperNet) or 896x896 (Mask2Former) window.

Mask2Former head (``decode_head`` of the mask2former configs, ViT-Adapter's ``mmseg_custom``
``Mask2FormerHead``; see :mod:`.mask2former`): 171 classes (80 things + 91 stuff) + "no object",
``feat_channels = out_channels = 1024``, 200 queries, ``MSDeformAttnPixelDecoder`` (GroupNorm 32,
6 encoder layers of deformable attention with 32 heads, 3 levels, 4 points, FFN 4096), 9 decoder
layers (masked cross-attention, self-attention, FFN 4096; 32 heads; post-norm), sine positional
encodings with 512 features per axis, normalised.
"""
from __future__ import annotations

from dataclasses import dataclass, field

MEAN = (123.675, 116.28, 103.53)  # RGB, on 0..255 (img_norm_cfg)
STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class ViTAdapterConfig:
    """One variant: architecture, test pipeline, weights. Sizes in pixels."""

    name: str
    head: str  # "upernet" | "mask2former"
    implemented: bool
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    patch_size: int = 16
    init_values: float = 1e-6  # layer scale gamma_1/gamma_2 present
    conv_inplane: int = 64
    n_points: int = 4
    deform_num_heads: int = 16
    cffn_ratio: float = 0.25
    deform_ratio: float = 0.5
    interaction_indexes: tuple[tuple[int, int], ...] = ((0, 5), (6, 11), (12, 17), (18, 23))
    num_classes: int = 171
    head_channels: int = 1024  # UperNet decode_head.channels (the config overrides the base's 512)
    pool_scales: tuple[int, ...] = (1, 2, 3, 6)
    aux_channels: int = 256  # FCN auxiliary head (training only; in the checkpoint)
    aux_in_index: int = 2
    # Mask2Former head (decode_head of the mask2former configs; unused by UperNet variants)
    m2f_channels: int = 1024  # feat_channels = out_channels = decoder embed_dims (no decoder_input_projs)
    num_queries: int = 200
    m2f_enc_layers: int = 6  # pixel decoder: DetrTransformerEncoder of MultiScaleDeformableAttention layers
    m2f_enc_heads: int = 32
    m2f_enc_points: int = 4
    m2f_dec_layers: int = 9  # DetrTransformerDecoder, masked cross-attn -> self-attn -> FFN, post-norm
    m2f_dec_heads: int = 32
    m2f_ffn: int = 4096  # feedforward_channels of both the encoder and the decoder FFNs
    m2f_gn_groups: int = 32  # GroupNorm of the pixel decoder's ConvModules
    crop: int = 640  # slide window = backbone img_size (relative position bias tables are per window)
    stride: int = 426
    img_scale: tuple[int, int] = (2560, 640)
    size_divisor: int = 32
    weight_id: str = ""
    published_miou: str = ""  # the checkpoint's own score on COCO-Stuff-164k val (as published)
    config_file: str = ""
    pretrain: str = ""
    random_only: bool = False  # no released weights (registry refused; random or a file path only)
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def window(self) -> tuple[int, int]:
        return (self.crop // self.patch_size, self.crop // self.patch_size)


_CFG_DIR = "segmentation/configs/coco_stuff164k/"
VARIANTS: dict[str, ViTAdapterConfig] = {c.name: c for c in (
    ViTAdapterConfig(
        "upernet-beit-l-cocostuff164k", "upernet", True,
        weight_id="vit-adapter-upernet-beit-l-cocostuff164k",
        published_miou="50.5 single-scale / 50.7 multi-scale (COCO-Stuff-164k val, 5000 images, 171 classes)",
        config_file=_CFG_DIR + "upernet_beit_adapter_large_640_80k_cocostuff164k_ss.py",
        pretrain="BEiT-L beit_large_patch16_224_pt22k_ft22k (ImageNet-22k)"),
    ViTAdapterConfig(
        "mask2former-beit-l-cocostuff164k", "mask2former", True, crop=896, stride=512, img_scale=(3584, 896),
        weight_id="vit-adapter-mask2former-beit-l-cocostuff164k",
        published_miou="51.7 single-scale / 52.0 multi-scale (COCO-Stuff-164k val, 5000 images, 171 classes)",
        config_file=_CFG_DIR + "mask2former_beit_adapter_large_896_80k_cocostuff164k_ss.py",
        pretrain="BEiT-L beit_large_patch16_224_pt22k_ft22k (ImageNet-22k)"),
    ViTAdapterConfig(
        "mask2former-beitv2-l-cocostuff164k", "mask2former", True, crop=896, stride=512, img_scale=(3584, 896),
        weight_id="vit-adapter-mask2former-beitv2-l-cocostuff164k",
        published_miou="52.3 single-scale (COCO-Stuff-164k val, 5000 images, 171 classes)",
        config_file=_CFG_DIR + "mask2former_beitv2_adapter_large_896_80k_cocostuff164k_ss.py",
        pretrain="BEiTv2-L beitv2_large_patch16_224_pt1k_ft21k (ImageNet-1k pre-training, 21k fine-tuning)"),
    ViTAdapterConfig(
        "tiny", "upernet", True, embed_dim=32, depth=4, num_heads=2, conv_inplane=8, n_points=2,
        deform_num_heads=2, interaction_indexes=((0, 0), (1, 1), (2, 2), (3, 3)), head_channels=16,
        aux_channels=8, crop=64, stride=48, img_scale=(256, 64), random_only=True,
        notes=("test-size model of the UperNet variant's structure; no released weights",)),
    ViTAdapterConfig(
        "tiny-mask2former", "mask2former", True, embed_dim=32, depth=4, num_heads=2, conv_inplane=8, n_points=2,
        deform_num_heads=2, interaction_indexes=((0, 0), (1, 1), (2, 2), (3, 3)), m2f_channels=32, num_queries=8,
        m2f_enc_layers=2, m2f_enc_heads=4, m2f_enc_points=2, m2f_dec_layers=4, m2f_dec_heads=4, m2f_ffn=64,
        m2f_gn_groups=4, crop=64, stride=48, img_scale=(256, 64), random_only=True,
        notes=("test-size model of the Mask2Former variants' structure; no released weights",)),
)}
DEFAULT = "upernet-beit-l-cocostuff164k"


def get(name: str) -> ViTAdapterConfig:
    """The variant ``name``; KeyError lists the known ones."""
    if name not in VARIANTS:
        raise KeyError(f"unknown ViT-Adapter variant {name!r}; known: {', '.join(VARIANTS)}")
    return VARIANTS[name]


# mmsegmentation's COCOStuffDataset class order = train ids 0..170 (80 things, then 91 stuff).
STUFF_NAMES = (
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage", "cardboard", "carpet",
    "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard", "curtain", "desk-stuff",
    "dirt", "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone", "floor-tile", "floor-wood",
    "flower", "fog", "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house",
    "leaves", "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper",
    "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield", "railing", "railroad", "river",
    "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow",
    "solid-other", "stairs", "stone", "straw", "structural-other", "table", "tent", "textile-other", "towel",
    "tree", "vegetable", "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood")
assert len(STUFF_NAMES) == 91


def class_names() -> tuple[str, ...]:
    """The 171 COCO-Stuff-164k class names by train id (COCO's 80 thing names, then the 91 stuff names)."""
    from bench.data.coco import COCO_THINGS

    return tuple(n for _, n in COCO_THINGS) + STUFF_NAMES
