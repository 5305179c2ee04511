"""The verdict: what a study shows, decided once for the search and the report. No torch.

target.py      the metric value that counts as a good result
cost.py        time to the target: where a curve crosses it, an epoch's seconds per family
frames.py      the study as tidy tables (trials, replicates, curves)
confidence.py  replicates over seeds: intervals, probabilities, winner or group
judge.py       the verdict on a study as it stands
progress.py    what each phase has run and what it still lacks
"""
