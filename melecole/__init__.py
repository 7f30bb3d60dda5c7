"""melecole: neuron segmentation in 3D EM with learned voxel embeddings and the Mutex Watershed."""

__version__ = "0.1.0"
