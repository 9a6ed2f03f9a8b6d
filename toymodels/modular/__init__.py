"""The bilinear modular-addition toy model ("symmetric mixtures"): training, Fourier and
unmixing analysis, the constructed loss-of-mixing solutions and the export with pure-frequency
ground truth."""
