"""Audio input: WAV files read safely (:mod:`.wav`) and log-mel spectrograms (:mod:`.mel`)."""
