"""Compare families across tasks: several finished studies on one offline page.

python -m pipeline.compare 'compare.studies=[runs/digits/studies/study.journal,...]'
"""
