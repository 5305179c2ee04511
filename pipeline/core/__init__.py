"""What the search and the report stages share: errors, the trial record, the study's storage.

Nothing here imports torch or Lightning, so the report stage starts without them.
"""
