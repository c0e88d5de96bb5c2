"""Steps of Describe-and-Dissect (DnD): see :mod:`dndbench.describers.dnd` for the whole method.

* :mod:`~dndbench.dnd.cropping` — step 1, attention cropping (Otsu boxes of activation maps);
* :mod:`~dndbench.dnd.candidates` — step 2, LLM prompts, answer clean-up, candidate normalisation;
* :mod:`~dndbench.dnd.selection` — step 3, activation ranks and scoring functions;
* :mod:`~dndbench.dnd.batching` — the layer-batched execution of the three steps.
"""
