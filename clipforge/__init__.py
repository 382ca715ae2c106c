"""clipforge: train CLIP-style image-text encoders, index with FAISS, serve with FastAPI."""

__version__ = "0.1.0"
