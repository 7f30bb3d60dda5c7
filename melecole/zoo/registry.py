"""The shipped models: listing, ``zoo:<name>`` addresses, checksum verification."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from melecole.errors import MelecoleError

ZOO_PREFIX = "zoo:"
ZOO_ROOT = Path(__file__).parent / "models"
MANIFEST = "zoo.json"


@dataclass(frozen=True)
class ZooModel:
    """One shipped model, as its ``zoo.json`` describes it."""

    name: str
    folder: Path
    manifest: dict

    @property
    def checkpoint(self) -> Path:
        return self.folder / self.manifest["checkpoint"]

    @property
    def version(self) -> int:
        return int(self.manifest["version"])


def zoo_models(root: str | Path = ZOO_ROOT) -> dict[str, ZooModel]:
    """Every model under ``root`` by name."""
    models = {}
    for path in sorted(Path(root).glob(f"*/{MANIFEST}")):
        try:
            manifest = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise MelecoleError(f"{path}: not valid JSON ({error})") from None
        models[manifest["name"]] = ZooModel(manifest["name"], path.parent, manifest)
    return models


@lru_cache(maxsize=None)
def _verified(path: Path, expected: str) -> None:
    from melecole.data.download import sha256sum

    found = sha256sum(path)
    if found != expected:
        raise MelecoleError(f"{path}: SHA-256 {found} differs from the zoo's {expected}; the shipped model is "
                            "damaged or was replaced (reinstall melecole)")


def resolve_checkpoint(address: str | Path, root: str | Path = ZOO_ROOT) -> Path:
    """The checkpoint file an address names: ``zoo:<name>`` (verified by checksum) or a path."""
    text = str(address)
    if not text.startswith(ZOO_PREFIX):
        return Path(address)
    name = text[len(ZOO_PREFIX):]
    models = zoo_models(root)
    if name not in models:
        raise MelecoleError(f"{text}: no such model in the zoo (available: {', '.join(models) or 'none'}; "
                            "list them with `melecole zoo`)")
    model = models[name]
    if not model.checkpoint.is_file():
        raise MelecoleError(f"{model.checkpoint}: the zoo model's checkpoint is missing (reinstall melecole)")
    _verified(model.checkpoint.resolve(), model.manifest["sha256"])
    return model.checkpoint


def _scores(scores: dict | None) -> str:
    if not scores:
        return "-"
    return f"{scores['vi_split']:.3f} / {scores['vi_merge']:.3f} (sum {scores['vi_split'] + scores['vi_merge']:.3f})"


def zoo_listing(root: str | Path = ZOO_ROOT) -> str:
    """A table of the shipped models: name, version, what it is for, and its recorded scores."""
    models = zoo_models(root)
    if not models:
        return "no models in the zoo"
    lines = []
    for name, model in models.items():
        m = model.manifest
        lines += [f"zoo:{name}  (version {model.version}, {model.checkpoint.stat().st_size / 2**20:.1f} MiB)",
                  f"  {m['description']}",
                  f"  pooled validation VI split / merge: {_scores(m.get('validation'))}"]
        for volume, scores in m.get("test", {}).items():
            lines.append(f"  test, {volume}: {_scores(scores)}")
        lines.append(f"  model card: {model.folder / 'MODEL_CARD.md'}")
    return "\n".join(lines)
