"""The report stage: the verdict and the study's record as one offline HTML file.

    python -m pipeline.report [KEY=VALUE ...]

results (every number, once), prose and rows (the words), names (how names and numbers are
written), figures (seaborn), html (the page), summary (the files beside it). No torch.
"""
