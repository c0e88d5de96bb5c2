"""Metrics: scores of descriptions against some notion of truth."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from dndbench.registry import ComponentConfig, Registry

if TYPE_CHECKING:
    import pandas as pd

    from dndbench.context import Context


@dataclass
class MetricConfig(ComponentConfig):
    """Options every metric has."""


C = TypeVar("C", bound=MetricConfig)


class Metric(ABC, Generic[C]):
    """Base class of metrics.

    :meth:`score` gets the descriptions table of one describer (columns ``unit``, ``label``,
    ``label_2``, ``label_3``, ``score``, ...) and returns a tidy table with columns
    ``unit``, ``metric``, ``value`` (one metric may emit several named figures).
    ``Metric[MyConfig]`` with ``Config = MyConfig`` types ``self.config``.
    """

    Config: type[MetricConfig] = MetricConfig
    version: str = "1"

    def __init__(self, config: C) -> None:
        self.config: C = config

    def applies_to(self, ctx: "Context") -> bool:
        """Whether the metric can score units of this context (used by ``metric=all``)."""
        return True

    @abstractmethod
    def score(self, descriptions: "pd.DataFrame", ctx: "Context") -> "pd.DataFrame":
        """Per-unit scores: columns ``unit``, ``metric``, ``value``."""


METRICS: Registry[Metric[Any]] = Registry("metric")
