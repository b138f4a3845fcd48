"""What the scorer loads and runs per event: the bundle loader (:mod:`~models.serving.bundle`),
the forest runtime (:mod:`~models.serving.forest`), the online segmenter
(:mod:`~models.serving.segmenter`), the policy (:mod:`~models.serving.policy`) and the contracts
the processor needs from them (:mod:`~models.serving.contracts`).

Nothing here imports pandas, plotly or :mod:`models.training` (a test checks it in a fresh
interpreter): the scorer's image and start-up stay small."""
