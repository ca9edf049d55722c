"""Stage 1, images to vectors: the `embed` stage, its local and Ray engines, and the
embeddings store (Parquet) that the build stage reads."""
