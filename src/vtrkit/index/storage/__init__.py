"""Index storage: catalog, feature store, ANN, writer lock, compaction."""
