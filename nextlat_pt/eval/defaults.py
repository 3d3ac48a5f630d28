"""Default settings of the latent diagnostics, in a module with no imports, so that the
command lines (`eval --help`, `eval compare --help`) show them without loading torch."""

DIAG_SEQUENCES = 256  # validation windows for the effective rank and the probes (the paper's)
DIAG_TOKENS = 256  # tokens per window
PROBE_OFFSETS = 8  # probes for the tokens 1..K ahead
PROBE_STEPS = 400  # AdamW steps per probe
PROBE_LR = 1e-2
FORWARD_BATCH_SIZE = 8  # windows per forward pass when collecting hidden states
