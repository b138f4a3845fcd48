"""Everything learned, in sub-packages by lifecycle (docs/ARCHITECTURE.md §2).

- :mod:`models.features`: the feature state machine, its vocabularies, event kernel and state
  codec; used by serving and by training alike (there is no second implementation).
- :mod:`models.serving`: what the scorer loads and runs per event: bundle loader, forest
  runtime, online segmenter, policy. Imports neither pandas, plotly nor training code.
- :mod:`models.training`: fit and evaluate the early-warning model, compare clusterings, write
  bundles.
- :mod:`models.data`: history adapters (seed CSV, UCI, event logs) and the synthetic book.
- :mod:`models.report`: the analysts' interactive HTML report.
"""
