"""One page across tasks: the table, AlgoPerf performance profiles, scores, a sentence."""

from __future__ import annotations

import math
import re
import shutil

import pandas as pd
import pytest

from benchmarks.synthetic import write_study
from pipeline.compare.__main__ import main as compare_main
from pipeline.compare.profiles import ratios, scores
from tests.conftest import require_service


def _table(rows: list[tuple[str, str, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["task", "family", "median_seconds"])


def test_a_family_fastest_on_every_task_scores_one():
    table = _table(
        [
            ("a", "adam", 1.0),
            ("a", "sgd", 2.0),
            ("b", "adam", 3.0),
            ("b", "sgd", math.inf),  # missed: infinite
            ("c", "adam", 0.5),
            ("c", "sgd", 2.5),  # 5x: beyond r_max = 4, counts as infinite
        ]
    )
    ranked = scores(table)
    assert ranked.index[0] == "adam" and ranked["adam"] == pytest.approx(1.0)
    r = ratios(table)
    assert (
        r.loc["a", "sgd"] == 2.0 and math.isinf(r.loc["b", "sgd"]) and math.isinf(r.loc["c", "sgd"])
    )
    # sgd is within tau of the fastest on 1 of 3 tasks from tau = 2: area (4 - 2) / 3 of 1/3.
    assert ranked["sgd"] == pytest.approx((4 - 2) / 3 / 3, abs=0.01)


def test_compare_page_from_generated_studies(tmp_path, capsys):
    for task, seed in (("digits", 1), ("moons", 2)):
        study = write_study(
            f"journal:///{tmp_path}/{task}.journal", 80, study_name=task, race=True, seed=seed
        )
    # moons is to be raced under stricter rules (a rerun with confidence 0.999 and 80 seeds):
    # what it raced decides less, so the race has runs to go.
    config = study.user_attrs["config"]
    config["race"]["seeds"] = [*config["race"]["seeds"], 80]
    config["verdict"]["confidence"] = 0.999
    study.set_user_attr("config", config)
    code = compare_main(
        [
            f"compare.studies=[{tmp_path}/digits.journal,{tmp_path}/moons.journal]",
            f"compare.dir={tmp_path}/compare",
        ]
    )
    assert code == 0, capsys.readouterr().err
    html = (tmp_path / "compare" / "index.html").read_text()
    assert "Try " in html and "digits" in html and "moons" in html
    assert re.search(r"Not final: on moons, round \d of the race still needs \d+ runs", html)
    assert "on digits" not in html.split("Try ")[0]  # finished: no word about it
    assert "data:image/png;base64," in html and "<script" not in html
    table = pd.read_csv(tmp_path / "compare" / "table.csv")
    assert set(table.task) == {"digits", "moons"}
    ranked = pd.read_csv(tmp_path / "compare" / "scores.csv")
    assert ranked.score.between(0, 1).all() and ranked.declared_on.is_monotonic_decreasing
    _render(tmp_path / "compare" / "index.html")


def test_compare_refuses_a_study_that_was_not_raced(tmp_path, capsys):
    write_study(f"journal:///{tmp_path}/a.journal", 10, study_name="a")
    code = compare_main([f"compare.studies=[{tmp_path}/a.journal]", f"compare.dir={tmp_path}/c"])
    err = capsys.readouterr().err
    assert code == 2 and "has not been raced" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "c").exists()


def _render(page) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        require_service("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium, args=["--no-sandbox", "--disable-gpu"]
        )
        tab = browser.new_page()
        tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        tab.on("pageerror", lambda e: errors.append(str(e)))
        tab.goto(page.as_uri(), wait_until="load")
        widths = tab.eval_on_selector_all("img", "imgs => imgs.map(i => i.naturalWidth)")
        browser.close()
    assert errors == [] and widths and all(w > 0 for w in widths)


def test_on_generated_studies_the_family_fastest_everywhere_scores_one(tmp_path, capsys):
    """Synthetic Adam learns far faster than SGD (benchmarks/synthetic.py) on every task."""
    for task, seed in (("a", 1), ("b", 2)):
        write_study(
            f"journal:///{tmp_path}/{task}.journal",
            30,
            study_name=task,
            families=["sgd", "adam"],
            race=True,
            seed=seed,
        )
    code = compare_main(
        [
            f"compare.studies=[{tmp_path}/a.journal,{tmp_path}/b.journal]",
            f"compare.dir={tmp_path}/c",
        ]
    )
    assert code == 0, capsys.readouterr().err
    ranked = pd.read_csv(tmp_path / "c" / "scores.csv").set_index("family").score
    assert ranked["adam"] == pytest.approx(1.0) and ranked["sgd"] < 1.0


def test_studies_named_from_their_search_are_shown_by_task(tmp_path, capsys):
    """digits-<hash> reads "digits"; two studies of one task (two seeds) keep their names."""
    from pipeline.compare.__main__ import gather
    from pipeline.config import compose

    stores = []
    for name, task, seed in (("moons-1a2b", "moons", 1), ("digits-3c4d", "digits", 2)):
        url = f"journal:///{tmp_path}/{name}.journal"
        study = write_study(url, 40, study_name=name, race=True, seed=seed)
        config = study.user_attrs["config"]
        config["task"]["name"] = task
        study.set_user_attr("config", config)
        stores.append(f"{tmp_path}/{name}.journal")
    cfg = compose([f"compare.studies=[{','.join(stores)}]"])
    assert set(gather(cfg).task) == {"moons", "digits"}
    study = write_study(
        f"journal:///{tmp_path}/moons-5e6f.journal", 40, study_name="moons-5e6f", race=True, seed=3
    )
    config = study.user_attrs["config"]
    config["task"]["name"] = "moons"
    study.set_user_attr("config", config)
    cfg = compose([f"compare.studies=[{','.join(stores)},{tmp_path}/moons-5e6f.journal]"])
    assert set(gather(cfg).task) == {"moons-1a2b", "moons-5e6f", "digits"}


def test_the_first_choice_is_the_family_the_races_declared_not_the_lowest_medians():
    """A family dropped after 5 seeds whose rough medians are lowest everywhere is not
    recommended over one every task's race kept in its declared group."""
    from pipeline.compare.__main__ import held, sentence

    rows = []
    for task in ("a", "b", "c"):
        group = ["adam"] if task != "c" else ["adamw"]
        for family, seconds in (("momentum", 1.0), ("adam", 1.2), ("adamw", 1.3)):
            rows.append(
                {
                    "task": task,
                    "family": family,
                    "median_seconds": seconds,
                    "low": seconds * 0.9,
                    "high": seconds * 1.1,
                    "reached": "5/5",
                    "winner": group[0],
                    "group": group,
                    "unfinished": "",
                }
            )
    table = pd.DataFrame(rows)
    assert held(table).to_dict() == {"adam": 2, "adamw": 1, "momentum": 0}
    text = sentence(table)
    assert text.startswith("Try Adam first: in the declared group on 2 of 3 tasks"), text
    assert "Adam not on c, where the race declared AdamW and dropped it as slower" in text
    assert "Momentum" not in text
    tied = table.assign(
        group=[
            ["adam", "adamw"] if t == "a" else g
            for t, g in zip(table.task, table.group, strict=True)
        ]
    )
    assert sentence(tied).startswith("Try Adam or AdamW first: each in the declared group on 2")
