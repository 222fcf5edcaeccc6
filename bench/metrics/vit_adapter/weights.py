"""Weight files of the ViT-Adapter COCO-Stuff-164k segmenters (data; no torch import).

Picked up by :func:`bench.weights.family_entries` (``bench/metrics/<pkg>/weights.py`` like the
codec families' tables), so ``bench weights list|fetch|import|verify`` see them.

The releases (github.com/czczup/ViT-Adapter, README of ``segmentation/configs/coco_stuff164k``)
publish no digest: the entries are *unverified* (any file in place is accepted and ``bench
weights fetch``/``import`` print its sha256 so that it can be stored here). The UperNet file is
named ``.pth.tar`` and the Mask2Former ones are ``.zip``: :mod:`.checkpoint` reads a torch
checkpoint directly and unpacks a tar/zip archive holding one (once, beside the file).

Licences: ViT-Adapter code and checkpoints Apache-2.0 (czczup/ViT-Adapter). The backbones were
initialised from BEiT-L / BEiTv2-L (microsoft/unilm, MIT licence; pre-trained on ImageNet-22k /
ImageNet-1k, whose terms limit the images to non-commercial research) and fine-tuned on
COCO-Stuff-164k train2017 (annotations CC BY 4.0; images under their Flickr licences).
"""
from __future__ import annotations

from bench.weights import WeightFile

_REL = "https://github.com/czczup/ViT-Adapter/releases/download/"
_LIC = ("Apache-2.0 (czczup/ViT-Adapter); backbone initialised from {pre} (microsoft/unilm, MIT; ImageNet "
        "pre-training data: non-commercial research terms); fine-tuned on COCO-Stuff-164k (CC BY 4.0 annotations)")
_NOTE = ("no digest published (unverified until hashed); config segmentation/configs/coco_stuff164k/{cfg}; "
         "published mIoU {miou} on COCO-Stuff-164k val")

WEIGHTS = (
    WeightFile("vit-adapter-upernet-beit-l-cocostuff164k",
               "upernet_beit_adapter_large_640_80k_cocostuff164k.pth.tar",
               _REL + "v0.2.6/upernet_beit_adapter_large_640_80k_cocostuff164k.pth.tar", "",
               _LIC.format(pre="BEiT-L beit_large_patch16_224_pt22k_ft22k"), "bench", ("miou", "miou_cocostuff"),
               note=_NOTE.format(cfg="upernet_beit_adapter_large_640_80k_cocostuff164k_ss.py",
                                 miou="50.5 SS / 50.7 MS") + "; 451M parameters; bench's default ViT-Adapter"),
    WeightFile("vit-adapter-mask2former-beit-l-cocostuff164k",
               "mask2former_beit_adapter_large_896_80k_cocostuff164k.zip",
               _REL + "v0.2.6/mask2former_beit_adapter_large_896_80k_cocostuff164k.zip", "",
               _LIC.format(pre="BEiT-L beit_large_patch16_224_pt22k_ft22k"), "bench",
               ("miou", "miou_cocostuff"),
               note=_NOTE.format(cfg="mask2former_beit_adapter_large_896_80k_cocostuff164k_ss.py",
                                 miou="51.7 SS / 52.0 MS") + "; 571M parameters"),
    WeightFile("vit-adapter-mask2former-beitv2-l-cocostuff164k",
               "mask2former_beitv2_adapter_large_896_80k_cocostuff164k.zip",
               _REL + "v0.3.1/mask2former_beitv2_adapter_large_896_80k_cocostuff164k.zip", "",
               _LIC.format(pre="BEiTv2-L beitv2_large_patch16_224_pt1k_ft21k"), "bench",
               ("miou", "miou_cocostuff"),
               note=_NOTE.format(cfg="mask2former_beitv2_adapter_large_896_80k_cocostuff164k_ss.py",
                                 miou="52.3 SS") + "; 571M parameters"),
)
