"""Offline learning: the early-warning model (:mod:`~models.training.early_warning`), the
clustering comparison that initialises the online segmenter (:mod:`~models.training.clustering`),
the population view the report draws (:mod:`~models.training.population`) and bundle writing
(:mod:`~models.training.bundle_writer`)."""
