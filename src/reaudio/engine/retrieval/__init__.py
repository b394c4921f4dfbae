"""The retrieval database: keys, neighbour features, the IVF index."""
