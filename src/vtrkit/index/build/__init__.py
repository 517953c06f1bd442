"""Index building: decoding, windows, thumbnails, the torchrun build and the shard merge."""
