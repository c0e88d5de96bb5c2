"""Text embedders for metrics: created on first use per run cache and device, counted in the run."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dndbench.backends.call_cache import services
from dndbench.backends.embedder import EMBEDDERS, Embedder

if TYPE_CHECKING:
    import numpy as np

    from dndbench.context import Context


class EmbedderPool:
    """The embedders one metric uses, keyed by (name, path, run cache, device)."""

    def __init__(self) -> None:
        self._embedders: dict[tuple[str, str, str, str], Embedder] = {}

    @staticmethod
    def check(name: str) -> None:
        """Raise (with "did you mean" suggestions) unless ``name`` is a registered embedder."""
        EMBEDDERS.entry(name)

    def get(self, ctx: "Context", name: str, path: str = "") -> Embedder:
        """The embedder ``name`` (from the local folder ``path`` if set), with the run's call cache."""
        key = (name, path, str(ctx.cache.root), ctx.device)
        if key not in self._embedders:
            overrides: dict[str, Any] = {"device": ctx.device}
            if path:
                overrides["path"] = path
            self._embedders[key] = EMBEDDERS.create(name, services=services(ctx.cache), **overrides)
        return self._embedders[key]

    def embed(self, ctx: "Context", name: str, texts: list[str], path: str = "") -> "np.ndarray":
        """Unit vectors (float64 rows) of ``texts``; texts actually encoded are counted in the run
        as ``embedded_texts.<name>``."""
        import numpy as np

        embedder = self.get(ctx, name, path)
        before = embedder.computed
        vectors = embedder.embed(texts).astype(np.float64)
        ctx.count(f"embedded_texts.{name}", embedder.computed - before)
        return vectors
