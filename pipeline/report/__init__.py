"""The report stage: the study's record as tables, words and figures in one offline HTML file.

    python -m pipeline.report [KEY=VALUE ...]

tables (numbers), prose (words), importance, results (both, computed once), figures (seaborn),
html (the page and the files beside it). Nothing here imports torch or Lightning.
"""
