"""dndbench: a plugin-based benchmark for neuron-description methods.

Importing the package is cheap; components live in registries (``dndbench.models.base.MODELS``,
``dndbench.probes.base.PROBES``, ``dndbench.describers.base.DESCRIBERS``,
``dndbench.metrics.base.METRICS``) and heavy libraries load only when a component runs.
"""
__version__ = "0.1.0"
