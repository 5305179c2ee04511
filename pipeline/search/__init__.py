"""The search stage: each trial a Lightning run of one sampled optimizer, schedule and batch.

    python -m pipeline.search [KEY=VALUE ...]

space (config -> suggestions -> torch objects); engine/ (one training run, alone or stacked);
phases/ (the search, the race, step timing, the study's creation); sampling/ (what the sampler
sees); tasks/ (the built-in data and models); workers/ (processes, claiming, the bar).
"""
