"""``midicorpus bench``: the curation checks against what is known of the shared files.

* performed or quantized (:mod:`corpus.curation.expressive`, rule nomml-v1): MAESTRO excerpts
  against Mutopia and Nottingham files, per piece and per track;
* track roles (:mod:`corpus.curation.roles`, rule roles-v1) against the track names that say what
  a track does (names are never a feature), on POP909 songs and on the other named files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from corpus.bench import Echo


def run_curation(data_dir: Path, arrangements_dir: Path | None = None, echo: Echo = print) -> dict[str, Any]:
    """Both checks; prints their confusion tables and returns the counts."""
    from corpus.curation import expressive, roles

    ex = expressive.check(data_dir)
    echo(f"performed or quantized ({ex['rule']}), per piece:")
    echo(expressive.confusion_table(ex["pieces"]))
    echo("per track:")
    echo(expressive.confusion_table(ex["tracks"]))
    ro = roles.check(data_dir, arrangements_dir)
    for name in ("pop909", "named"):
        if name in ro:
            r = ro[name]
            counts = {tuple(k.split("->")): n for k, n in r["confusion"].items()}
            echo(f"track roles ({ro['rule']}) against the track names, {name} ({r['files']} files):")
            echo(roles.confusion_table(counts))
    return {"expressive": ex, "roles": ro}
