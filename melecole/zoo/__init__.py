"""Pretrained models shipped with melecole: ``--checkpoint zoo:<name>`` and ``melecole zoo``.

Each model is a folder ``melecole/zoo/models/<name>/`` holding ``checkpoint.pt`` (a plain
melecole checkpoint, loaded with ``weights_only=True`` like any other), ``zoo.json`` (version,
SHA-256 of the checkpoint, training data and licences, recorded scores) and ``MODEL_CARD.md``
(the same facts for a reader). The checksum is verified before a zoo checkpoint is used, so a
damaged or replaced file is refused rather than silently predicting. Nothing is downloaded.
"""

from melecole.zoo.registry import ZOO_PREFIX, ZooModel, resolve_checkpoint, zoo_listing, zoo_models

__all__ = ["ZOO_PREFIX", "ZooModel", "resolve_checkpoint", "zoo_listing", "zoo_models"]
