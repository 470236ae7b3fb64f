"""Data: sources, decoding, pairing, splitting and the prepared cache."""
