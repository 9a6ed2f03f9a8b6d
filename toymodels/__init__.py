"""Toy models of superposition (Elhage et al. 2022) with a leading instances dimension."""
