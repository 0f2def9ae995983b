"""Reading metric samples in tests whatever extra labels (such as ``lane``) they carry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry


def sample_sum(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` that carry ``labels``, among any others."""
    total = 0.0
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                total += sample.value
    return total
