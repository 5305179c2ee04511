"""The search stage: each trial is a Lightning run of one sampled optimizer, schedule and batch.

    python -m pipeline.search [KEY=VALUE ...]

space (config -> suggestions -> torch objects), data and models (the embedded tasks), module and
callbacks (what a trial trains and records), trial (one run), objective (how a run ends), study
(create / resume), stale (dead workers' trials), samplers, workers (processes), progress.
"""
