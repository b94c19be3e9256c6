"""Hardware profiler: measure sampled sub-networks on this device and keep the records.

- `stats`: the measuring protocol (warm-up, repeats, median / IQR / CV, re-measure or flag);
- `fingerprint`: what device a profile was taken on;
- `store`: the profile files (`read_profile`, `ProfileWriter`);
- `base`: the `Backend` interface; `backends/`: one file per backend, registry in `backends/__init__.py`;
- `weights`: one sub-network's weights (from a checkpoint, or random from `config.json`);
- `runner`: the sampling plan, resume and progress of `llamanas profile`.
"""
