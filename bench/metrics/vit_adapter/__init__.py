"""ViT-Adapter semantic segmenter (Chen et al., ICLR 2023) in plain PyTorch, for PerCo's mIoU.

PerCo (Careil et al., ICLR 2024, Sec. 4.1) measures local semantic preservation with "the
pretrained ViT-Adapter segmentation network ... trained on the COCO train split": the released
COCO-Stuff-164k models of czczup/ViT-Adapter (171 classes, mmsegmentation train ids 0..170).
This package rebuilds them from the paper and the public definitions without mmcv/mmseg or any
compiled op, and loads the released checkpoints unchanged:

* :mod:`.configs`   -- the released variants (architecture, test pipeline, weights, published mIoU);
  light, no torch import;
* :mod:`.weights`   -- their entries in bench's weight registry (light);
* :mod:`.msda`      -- multi-scale deformable attention by bilinear ``grid_sample``;
* :mod:`.adapter`   -- BEiT backbone (timm's BEiT blocks) + spatial prior module, injectors, extractors;
* :mod:`.heads`     -- UperNet decode head and the FCN auxiliary head (mmseg layout);
* :mod:`.mask2former` -- the Mask2Former head of the two Mask2Former variants (ViT-Adapter's
  ``mmseg_custom`` layout: deformable-attention pixel decoder, masked-attention decoder,
  semantic inference);
* :mod:`.model`     -- the encoder-decoder, the released test pipeline (resize, slide window),
  and the official state-dict key list derived from a config;
* :mod:`.checkpoint` -- reading the released file (``.pth.tar``/``.pth``/``.zip``) and strict loading;
* :mod:`.segmenter` -- the ``vit-adapter`` backend of :mod:`bench.metrics.segmenters`;
* :mod:`.reproduce` -- ``python -m bench.metrics.vit_adapter.reproduce``: the check that a checkpoint
  gives its published mIoU on uncompressed COCO-Stuff-164k val.

Import the submodules directly; this ``__init__`` imports nothing heavy.
"""
