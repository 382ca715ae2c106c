"""Contrastive image-text training: WebDataset data, InfoNCE/SigLIP losses, loop, checkpoints, export."""
