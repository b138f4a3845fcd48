"""The analysts' interactive HTML report (:mod:`~models.report.render`)."""
