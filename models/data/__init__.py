"""Where history comes from: file adapters (:mod:`~models.data.adapters`: the seed CSV, UCI,
event logs) and the synthetic book (:mod:`~models.data.synthetic`)."""
