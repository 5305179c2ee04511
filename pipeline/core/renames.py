"""Keys renamed since studies were first stored, read in their new names.

    renamed_search({"protocol": "fair"})   # {"trials_per_family": "equal_random"}

A study keeps the config it was created with; a rerun compares it with today's (search.phases
.study) and the report reads it, so both read an older study's keys as they are named now.
"""

from __future__ import annotations

from typing import Any

# search.protocol -> search.trials_per_family, with its values renamed.
PER_FAMILY = {"balanced": "equal", "fair": "equal_random", "adaptive": "sampler"}


def renamed_search(search: dict[str, Any]) -> dict[str, Any]:
    """A search section with search.protocol and search.seek under their new names."""
    out = dict(search)
    if "protocol" in out:
        out.setdefault("trials_per_family", PER_FAMILY.get(out["protocol"], out["protocol"]))
        del out["protocol"]
    if "seek" in out:
        out.setdefault("learn_from", out.pop("seek"))
    return out
