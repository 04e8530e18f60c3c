"""Headless DeepGen trainer (stages 1–3).

Model-independent building blocks (no model imports, cheap to import):

- :mod:`deepgen.train.data` — datasets (official JSON lists, image folders), fix_pixels resizing, the
  single-task micro-batch pattern sampler and loader, caption dropout;
- :mod:`deepgen.train.optim` — AdamW parameter groups and the LR schedules;
- :mod:`deepgen.train.checkpointing` — atomic per-step checkpoint folders and exact resume;
- :mod:`deepgen.train.schema` — the config schema of every stage (types, unknown and old keys, one-line errors);
- :mod:`deepgen.train.config` — ``TrainConfig`` and the stage presets (TOML/JSON/YAML files);
- :mod:`deepgen.train.grpo` — the MR-GRPO (stage 3) math core.

See docs/training.md.  Submodules are not imported here on purpose, so importing one piece does not
pull in the others.
"""
