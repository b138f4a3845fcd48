"""Everything learned: feature state machine, training, calibration, clustering, policy,
bundle, report."""
