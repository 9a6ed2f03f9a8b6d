"""The ``sae`` command line: wires toy models and SAEs together."""
