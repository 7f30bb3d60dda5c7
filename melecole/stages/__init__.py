"""One module per pipeline stage: each unpacks its config section and calls library functions."""
