"""Momentum contrast (MoCo, He et al. 2020) for dense 3D voxel embeddings.

:class:`MoCo` wraps any network that returns ``{"embedding": (B, E, Z, Y, X), ...}``. The online
network sees view a; a momentum copy of it (an exponential moving average of its weights, never
trained by gradients) sees view b. At given voxel pairs (the same tissue voxel in both views) the
embeddings go through a small projection MLP and are L2-normalised: queries from the online side,
keys from the momentum side. Keys are then pushed into a queue of negatives for later batches.
The queue is a registered buffer, so checkpoints save and restore it with the weights.

Every queued key keeps the identity of its voxel's neuron, (training volume index, label id), in
a buffer beside the queue, so the loss can leave a query's own neuron out of its negatives:
patches of a small volume overlap all the time, and without identities the queue would hold the
query's neuron, even its very voxel, as a negative. Empty slots and keys enqueued without an
identity hold volume :data:`UNKNOWN`, which matches nothing. A state dict from before the
identities (a periodic checkpoint of an older run) loads with its queue emptied: its keys'
neurons are unknown and any could be a false negative; the queue refills within ``queue_size``
keys.

Under DistributedDataParallel the keys are gathered from every rank before they are enqueued, so
all ranks hold the same queue. A momentum network with batch norm would see, in its batch
statistics, which samples belong together and could match keys to queries through them instead
of through the tissue ("cheating", He et al. section 3.3); with batch norm and several processes
the key batch is therefore shuffled across ranks and un-shuffled afterwards. On one process with
batch norm use group norm instead, or a batch of 1; on CUDA, SyncBatchNorm (which training turns
on for batch norm under DDP) normalises over the global batch and leaves nothing to cheat with.
"""

from __future__ import annotations

import copy
from itertools import chain

import torch
import torch.nn.functional as F
from torch import nn

from melecole import distributed

UNKNOWN = -1
"""The volume index of a queue slot whose identity is unknown (empty, or enqueued without one)."""


def _gather_voxels(volume: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    # volume (B, E, Z, Y, X), index (B, N) flat spatial indices -> (B * N, E)
    batch, channels = volume.shape[:2]
    flat = volume.reshape(batch, channels, -1)
    picked = torch.gather(flat, 2, index[:, None, :].expand(batch, channels, index.shape[1]))  # (B, E, N)
    return picked.transpose(1, 2).reshape(-1, channels)


class MoCo(nn.Module):
    """Online network + projection head, their momentum copies, and a queue of negative keys.

    Args:
        encoder: the network; ``encoder(x)["embedding"]`` is (B, feature_dim, Z, Y, X).
        feature_dim: channels of the embedding.
        projection_dim: dimension D of the projected, normalised features.
        queue_size: keys kept as negatives.
        momentum: m of the update ``key = m * key + (1 - m) * online``.

    Buffers:
        queue: (queue_size, D) keys; the first ``queue_count`` rows are filled.
        queue_identity: (queue_size, 2) int64 (volume index, label id) of each key's voxel;
            volume :data:`UNKNOWN` where there is none.
        queue_pointer: the row the next key goes to (wraps around).
        queue_count: filled rows, at most ``queue_size``.
        updates: momentum updates so far (also seeds the cross-rank key shuffle).
    """

    def __init__(self, encoder: nn.Module, feature_dim: int, projection_dim: int = 32, queue_size: int = 4096,
                 momentum: float = 0.99) -> None:
        super().__init__()
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if queue_size < 1 or projection_dim < 1 or feature_dim < 1:
            raise ValueError(f"queue_size {queue_size}, projection_dim {projection_dim} and feature_dim "
                             f"{feature_dim} must be positive")
        self.momentum = float(momentum)
        self.encoder = encoder
        hidden = 2 * max(feature_dim, projection_dim)
        self.projector = nn.Sequential(nn.Linear(feature_dim, hidden), nn.ReLU(inplace=True),
                                       nn.Linear(hidden, projection_dim))
        self.key_encoder = copy.deepcopy(encoder)
        self.key_projector = copy.deepcopy(self.projector)
        for parameter in chain(self.key_encoder.parameters(), self.key_projector.parameters()):
            parameter.requires_grad_(False)
        self.register_buffer("queue", torch.zeros(queue_size, projection_dim))
        self.register_buffer("queue_identity", torch.full((queue_size, 2), UNKNOWN, dtype=torch.long))
        self.register_buffer("queue_pointer", torch.zeros((), dtype=torch.long))
        self.register_buffer("queue_count", torch.zeros((), dtype=torch.long))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        # SyncBatchNorm already normalises over the global batch; plain batch norm needs the shuffle.
        self._batch_norm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, nn.SyncBatchNorm)
                               for m in encoder.modules())

    def forward(self, raw: torch.Tensor, view: torch.Tensor | None = None, index: torch.Tensor | None = None,
                view_index: torch.Tensor | None = None, valid: torch.Tensor | None = None,
                identity: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The encoder's outputs on ``raw``; with a second view, also queries, keys and the queue.

        In training mode a call with a view first updates the momentum network, then enqueues
        its keys after taking the snapshot of the queue it returns, so a batch never sees its
        own keys among the negatives.

        Args:
            raw: (B, C, Z, Y, X) view a.
            view: (B, C, Z, Y, X) view b, or None for the encoder's outputs alone.
            index: (B, N) flat voxel indices into view a of the N pairs per sample.
            view_index: (B, N) flat indices of the same voxels in view b.
            valid: (B, N) bool, pairs that exist (False = padding); all valid when None.
            identity: (B, N, 2) int64 (volume index, label id) of each pair, enqueued with its
                key; unknown when None.

        Returns:
            The encoder's dict, plus ``"queries"`` and ``"keys"`` (B * N, D), ``"queue"`` (filled
            rows, D) and ``"queue_identity"`` (filled rows, 2) when a view is given.
        """
        outputs = dict(self.encoder(raw))
        if view is None:
            return outputs
        if index is None or view_index is None or index.shape != view_index.shape or index.shape[0] != raw.shape[0]:
            raise ValueError(f"index {None if index is None else tuple(index.shape)} and view_index "
                             f"{None if view_index is None else tuple(view_index.shape)} must both be "
                             f"(B={raw.shape[0]}, N)")
        if view.shape != raw.shape:
            raise ValueError(f"view {tuple(view.shape)} and raw {tuple(raw.shape)} differ")
        if identity is not None and identity.shape != (*index.shape, 2):
            raise ValueError(f"identity {tuple(identity.shape)} must be (B, N, 2) for index {tuple(index.shape)}")
        valid = torch.ones_like(index, dtype=torch.bool) if valid is None else valid
        outputs["queries"] = F.normalize(self.projector(_gather_voxels(outputs["embedding"], index)), dim=1)
        with torch.no_grad():
            if self.training:
                self.momentum_update()
            key_embedding = self._key_embedding(view)
            keys = F.normalize(self.key_projector(_gather_voxels(key_embedding, view_index)), dim=1)
            outputs["keys"] = keys
            outputs["queue"] = self.queue[: int(self.queue_count)].clone()
            outputs["queue_identity"] = self.queue_identity[: int(self.queue_count)].clone()
            if self.training:
                self.enqueue(keys, valid.reshape(-1), None if identity is None else identity.reshape(-1, 2))
        return outputs

    @torch.no_grad()
    def momentum_update(self) -> None:
        """``key = m * key + (1 - m) * online`` for every parameter of encoder and projector."""
        online = chain(self.encoder.parameters(), self.projector.parameters())
        momentum = chain(self.key_encoder.parameters(), self.key_projector.parameters())
        for source, target in zip(online, momentum):
            target.mul_(self.momentum).add_(source.detach(), alpha=1.0 - self.momentum)
        self.updates += 1

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, valid: torch.Tensor | None = None,
                identity: torch.Tensor | None = None) -> None:
        """Writes ``keys`` (K, D) of every rank into the queue, oldest rows first, wrapping around.

        Under DDP each rank must pass the same K; ``valid`` (K,) drops padding rows after the
        gather. ``identity`` (K, 2) int64 (volume index, label id) goes with each key into
        ``queue_identity``, gathered alike; None enqueues the keys as unknown.
        """
        if keys.ndim != 2 or keys.shape[1] != self.queue.shape[1]:
            raise ValueError(f"keys {tuple(keys.shape)} must be (K, {self.queue.shape[1]})")
        if identity is not None and identity.shape != (keys.shape[0], 2):
            raise ValueError(f"identity {tuple(identity.shape)} must be (K={keys.shape[0]}, 2)")
        valid = torch.ones(keys.shape[0], dtype=torch.bool, device=keys.device) if valid is None else valid
        if identity is None:
            identity = torch.full((keys.shape[0], 2), UNKNOWN, dtype=torch.long, device=keys.device)
        kept = distributed.gather_tensors(valid)
        keys = distributed.gather_tensors(keys)[kept]
        identity = distributed.gather_tensors(identity.to(torch.long))[kept]
        size = self.queue.shape[0]
        keys, identity = keys[-size:], identity[-size:]
        count = keys.shape[0]
        if count == 0:
            return
        rows = (int(self.queue_pointer) + torch.arange(count, device=self.queue.device)) % size
        self.queue[rows] = keys.to(self.queue.dtype)
        self.queue_identity[rows] = identity.to(self.queue_identity.device)
        self.queue_pointer.fill_((int(self.queue_pointer) + count) % size)
        self.queue_count.fill_(min(size, int(self.queue_count) + count))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # ``state_dict`` is load_state_dict's own copy. A queue saved without identities is
        # dropped (see the module docstring) rather than kept as negatives of unknown neurons.
        if prefix + "queue" in state_dict and prefix + "queue_identity" not in state_dict:
            state_dict[prefix + "queue_identity"] = torch.full_like(self.queue_identity, UNKNOWN)
            state_dict[prefix + "queue_pointer"] = torch.zeros_like(self.queue_pointer)
            state_dict[prefix + "queue_count"] = torch.zeros_like(self.queue_count)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _key_embedding(self, view: torch.Tensor) -> torch.Tensor:
        if not (self._batch_norm and distributed.world_size() > 1):
            return self.key_encoder(view)["embedding"]
        # Shuffle the global key batch across ranks so batch statistics mix unrelated samples.
        batch, rank = view.shape[0], distributed.rank()
        everything = distributed.gather_tensors(view)  # (W * B, C, Z, Y, X)
        generator = torch.Generator().manual_seed(int(self.updates))
        order = torch.randperm(everything.shape[0], generator=generator).to(view.device)
        mine = everything[order[rank * batch:(rank + 1) * batch]]
        shuffled = distributed.gather_tensors(self.key_encoder(mine)["embedding"])  # in ``order``
        restored = torch.empty_like(shuffled)
        restored[order] = shuffled
        return restored[rank * batch:(rank + 1) * batch]
