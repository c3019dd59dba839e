"""The application half of pemn: training engine, data, augmentation, model registry, pruning baselines,
sweeps and export. Built on the core (:mod:`pemn`) and never imported by it."""
