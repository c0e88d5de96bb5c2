"""MILAN (Hernandez et al. 2022): exemplars, the captioner p(d | E), the language model p(d),
PMI decoding, training on annotations and released-checkpoint loading (METHODS.md §4)."""
