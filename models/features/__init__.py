"""The feature state machine: one loan's state from its events, the feature vocabularies
(:mod:`~models.features.columns`), the state machine (:mod:`~models.features.state`), its
compiled twin for the scorer's batch path (``_event_kernel``) and the changelog codec
(:mod:`~models.features.state_codec`). Training and serving both replay events through here."""
