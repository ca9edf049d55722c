"""Stage 2, vectors to a published index version: the `build` stage, the FAISS index types,
the memory budget and the writer of INDEX_DIR."""
