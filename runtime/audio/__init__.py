"""Audio for playback: decoding and validation, log-mel features, the encoder registry, test speech."""
