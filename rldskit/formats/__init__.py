"""One module per on-disk format. A format module knows bytes, not policy."""
