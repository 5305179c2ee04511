"""The report: one self-contained HTML file plus summary.json, recommendation.csv, curves.csv."""

from __future__ import annotations

import json
import math
import re
import shutil
from html import escape as html_escape
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import FrozenTrial, TrialState, create_trial

from benchmarks.synthetic import write_study
from pipeline.core.storage import load_study
from pipeline.report import prose
from pipeline.report.__main__ import main as report_main
from pipeline.report.prose import missing
from pipeline.report.results import collect
from pipeline.report.tables import recommend, time_to_target
from pipeline.search.phases.run import search
from pipeline.verdict.progress import unfinished
from pipeline.verdict.race import Arm, State
from tests.conftest import RACE, ROOT, TINY, require_service, tiny_config

ARTIFACTS = ROOT / "tests" / "artifacts"


RACED = "race.seeds=[1,5,10,20]"  # the rounds write_study(race=True) raced (the default)


def _report(tmp_path: Path, capsys, *overrides: str) -> tuple[int, str, str]:
    code = report_main(
        [
            *TINY,
            f"search.storage=sqlite:///{tmp_path}/study.db",
            f"report.dir={tmp_path}/reports",
            *overrides,
        ]
    )
    out = capsys.readouterr()
    return code, out.out, out.err


def _assert_self_contained(html: str) -> None:
    assert "<script" not in html.lower()
    assert "<link" not in html.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), (
        "fetches from the network"
    )
    assert "url(" not in html


def test_report_from_a_real_study(tmp_path, capsys):
    families = "search.optimizers=[sgd,adam,momentum]"
    cfg = tiny_config(tmp_path, "search.n_trials=10", families, *RACE)
    search(cfg)
    capsys.readouterr()
    code, out, err = _report(tmp_path, capsys, families, *RACE)
    assert code == 0, err
    reports = tmp_path / "reports"
    assert out.strip().splitlines()[-1] == str(reports / "index.html")  # the last line: its path
    html = (reports / "index.html").read_text()
    _assert_self_contained(html)
    for heading in (
        "Recommendation",
        "How sure is this?",
        "Summary",
        "Convergence",
        "The search",
        "Trials",
        "Reproduce",
    ):
        assert f">{heading}</h2>" in html
    for fact in (
        "moons",
        "pipeline.search.tasks.models.MLP",
        "cpu",
        "10 trials x up to 3 epochs",
        "optuna ",
        "1600 training / 400 validation examples",
        "1,218 parameters",
    ):
        assert fact in html
    assert html.count("data:image/png;base64,") >= 7

    summary = json.loads((reports / "summary.json").read_text())
    assert summary["trials"] == 10 and summary["metric"] == "val_loss"
    declared = summary["recommendation"]
    assert declared["raced"] and declared["seeds"] == 2
    # The page and summary.json say the same thing.
    assert html_escape(declared["sentence"]) in html
    assert summary["race_runs"] == declared["runs"] > 0
    assert summary["seconds"] == "modelled" and summary["timing"]
    assert summary["best_value"] == pytest.approx(
        min(
            t.value
            for t in load_study(f"sqlite:///{tmp_path}/study.db", "moons").get_trials()
            if t.state == TrialState.COMPLETE and t.user_attrs.get("role") == "search"
        )
    )

    table = pd.read_csv(reports / "recommendation.csv")
    assert list(table.family) == [f["family"] for f in declared["families"]]
    assert list(table["rank"]) == list(range(1, len(table) + 1))
    racing = table[table.status != "slower"]
    assert list(racing.index) == list(range(len(racing)))  # the declaration's families first
    assert list(racing.speed) == sorted(racing.speed)  # ranked by mean time over seeds
    assert declared["leader"] == table.family[0] and table.status[0] == "leader"
    assert declared["group"] == list(racing.family)
    assert {f["claim"] for f in declared["families"]} == {"family"}
    assert declared["setting"]["claim"] == "setting"

    curves = pd.read_csv(reports / "curves.csv")
    assert {
        "trial",
        "family",
        "epoch",
        "seconds",
        "val_loss",
        "train_loss",
        "lr",
        "family_best",
    } <= set(curves.columns)
    assert set(curves[curves.family_best == 1].trial) == set(table.trial)


def _trial(family: str, seconds: list[float], losses: list[float], number_lr: float = 0.01):
    epochs = list(range(1, len(losses) + 1))
    curve = {
        "epoch": epochs,
        "step": [e * 10 for e in epochs],
        "seconds": seconds,
        "train_loss": losses,
        "val_loss": losses,
        "val_acc": [0.5] * len(losses),
        "lr": [number_lr] * len(losses),
    }
    return create_trial(
        state=TrialState.COMPLETE,
        value=losses[-1],
        params={
            "optimizer": family,
            f"{family}.lr": number_lr,
            "schedule": "constant",
            "batch_size": 32,
        },
        distributions={
            "optimizer": optuna.distributions.CategoricalDistribution(["sgd", "adam", "momentum"]),
            f"{family}.lr": optuna.distributions.FloatDistribution(1e-4, 1, log=True),
            "schedule": optuna.distributions.CategoricalDistribution(["constant"]),
            "batch_size": optuna.distributions.CategoricalDistribution([32]),
        },
        user_attrs={"run": {"curve": curve, "device": "cpu", "seconds": seconds[-1]}},
    )


def _hand_made_study() -> optuna.Study:
    study = optuna.create_study(direction="minimize")
    study.set_user_attr("config", {"trainer": {"max_epochs": 3}, "search": {"metric": "val_loss"}})
    study.add_trials(
        [
            _trial("adam", [1.0, 2.0, 3.0], [0.5, 0.2, 0.10]),  # reaches 0.2 at 2.0 s
            _trial("adam", [0.5, 1.5, 2.5], [0.9, 0.5, 0.30]),  # never reaches 0.2
            _trial("momentum", [2.0, 5.0, 8.0], [0.6, 0.18, 0.15]),  # reaches 0.2 at 5.0 s
            _trial("sgd", [1.0, 2.0, 3.0], [1.0, 0.9, 0.8]),  # never
        ]
    )
    return study


def test_time_to_target_and_ranking_by_hand():
    results = collect(_hand_made_study(), target=0.2)
    ttt = results.ttt.set_index("trial")
    assert ttt.loc[0, "seconds_to_target"] == 2.0 and ttt.loc[0, "epochs_to_target"] == 2
    assert math.isnan(ttt.loc[1, "seconds_to_target"])
    assert ttt.loc[2, "seconds_to_target"] == 5.0
    table = results.recommendation
    assert list(table.family) == ["adam", "momentum", "sgd"]
    assert list(table.reached) == [True, True, False]
    # Single runs: no race, so no ratio, and the sentence says a rerun may differ.
    assert results.verdict is None
    assert prose.sentence(results) == (
        "The fastest single run was Adam (lr 0.01, constant, batch 32): val_loss ≤ 0.2 in "
        "2.00 s (2 epochs). These are single runs, one seed each, so a rerun may name another "
        "family; race them over seeds with race.seeds=[1,5,10,20] (the default)."
    )


def test_derived_target_is_the_best_relaxed_by_the_tolerance():
    results = collect(_hand_made_study(), tolerance=0.5)
    assert results.target.value == pytest.approx(0.15)  # best final 0.10 relaxed by 50%
    assert "relaxed by 50%" in prose.target_how(results.target)
    assert "set verdict.target to time every run against the same one" in prose.target_how(
        results.target
    )
    assert list(results.recommendation.family[:1]) == ["adam"]


def test_recommend_prefers_the_fastest_trial_of_a_family():
    trials = pd.DataFrame(
        {
            "number": [0, 1],
            "state": ["complete"] * 2,
            "family": ["adam"] * 2,
            "schedule": ["c"] * 2,
            "batch_size": [32, 64],
            "lr": [0.1, 0.2],
            "value": [0.1, 0.15],
            "final_val_loss": [0.1, 0.15],
            "final_val_acc": [0.9, 0.9],
            "params": [{}, {}],
        }
    )
    ttt = pd.DataFrame(
        {
            "trial": [0, 1],
            "epochs_to_target": [5, 2],
            "steps_to_target": [50, 20],
            "seconds_to_target": [5.0, 2.0],
        }
    )
    table = recommend(trials, ttt, direction="minimize")
    assert table.loc[0, "trial"] == 1  # not the best final value, the fastest to the target
    assert time_to_target(pd.DataFrame(), metric="val_loss", direction="minimize", target=1.0).empty


def test_partial_studies_still_render(tmp_path, capsys):
    storage = f"sqlite:///{tmp_path}/study.db"
    # Only failed trials:
    study = optuna.create_study(storage=storage, study_name="moons")
    study.set_user_attr("config", {"task": {"name": "moons"}})
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"error": "ValueError: boom"}))
    code, _, err = _report(tmp_path, capsys)
    assert code == 0, err
    html = (tmp_path / "reports" / "index.html").read_text()
    assert "No trial completed yet" in html
    assert "ValueError: boom" in html and "No plot of" in html
    summary = json.loads((tmp_path / "reports" / "summary.json").read_text())
    assert summary["failed"] == 1 and summary["best_value"] is None
    assert summary["recommendation"]["leader"] is None

    # Only pruned trials:
    pruned = optuna.create_study(storage=storage, study_name="pruned")
    curve = {"epoch": [1], "step": [5], "seconds": [0.1], "train_loss": [0.9], "val_loss": [0.9],
             "val_acc": [0.5], "lr": [0.01]}  # fmt: skip
    pruned.add_trial(create_trial(state=TrialState.PRUNED, user_attrs={"run": {"curve": curve}},
                                  intermediate_values={1: 0.9}))  # fmt: skip
    code, _, err = _report(tmp_path, capsys, "search.study_name=pruned")
    assert code == 0, err
    html = (tmp_path / "reports" / "index.html").read_text()
    assert "No trial completed" in html and "1 pruned" in html

    # One family only, with pruned trials:
    write_study(f"sqlite:///{tmp_path}/one.db", 12, study_name="one", families=["adam"])
    code, _out, err = _report(
        tmp_path, capsys, f"search.storage=sqlite:///{tmp_path}/one.db", "search.study_name=one"
    )
    assert code == 0, err
    table = pd.read_csv(tmp_path / "reports" / "recommendation.csv")
    assert list(table.family) == ["adam"]


def test_missing_study_is_a_clear_error(tmp_path, capsys):
    code, _, err = _report(tmp_path, capsys)
    assert code == 2 and err.startswith("error: search.storage: no study file at"), err
    write_study(f"sqlite:///{tmp_path}/study.db", 2, study_name="other")
    code, _out, err = _report(tmp_path, capsys)
    assert code == 2 and "no study 'moons'" in err and "it holds: other" in err


def test_user_strings_are_escaped(tmp_path, capsys):
    evil = "<script>alert(1)</script>"
    storage = f"sqlite:///{tmp_path}/study.db"
    write_study(storage, 8, study_name="moons", overrides=[f"task.name='{evil}'"])
    study = load_study(storage, "moons")
    trial = study.ask()
    study.tell(trial, state=TrialState.FAIL)
    code, _out, err = _report(tmp_path, capsys)
    assert code == 0, err
    html = (tmp_path / "reports" / "index.html").read_text()
    assert evil not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    _assert_self_contained(html)


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        require_service("Debian's chromium is not installed (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        require_service("playwright is not installed (pip install -e '.[dev]')")
    return path


def test_report_renders_in_a_real_browser(tmp_path, capsys):
    chromium = _chromium()
    from playwright.sync_api import sync_playwright

    write_study(f"sqlite:///{tmp_path}/study.db", 60, study_name="moons", race=True)
    code, _out, err = _report(tmp_path, capsys, RACED, "search.n_trials=60")
    assert code == 0, err
    page_url = (tmp_path / "reports" / "index.html").as_uri()
    errors: list[str] = []
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        page.goto(page_url, wait_until="load")
        images = page.eval_on_selector_all(
            "img", "imgs => imgs.map(i => [i.alt, i.complete, i.naturalWidth])"
        )
        first_screen = page.evaluate(
            """() => ({
              verdict: document.querySelector("p.verdict").getBoundingClientRect().bottom,
              table: document.querySelector("table.compact").getBoundingClientRect().bottom,
              text: [...document.querySelectorAll("p.verdict")].map(p => p.textContent),
            })"""
        )
        # A sentence ends at ". " before a capital letter (decimals and "e.g." do not).
        first_screen["sentences"] = sum(
            len(re.split(r"[.!?]\s+(?=[A-Z])", text.strip())) for text in first_screen["text"]
        )
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
        browser.close()
    assert len(images) >= 9, images  # the race's figures too
    # The first screen (1200 x 900) answers the question: the sentence and the compact table.
    assert first_screen["verdict"] <= 900 and first_screen["table"] <= 900, first_screen
    assert first_screen["sentences"] <= 3, first_screen
    assert all(complete and width > 0 for _, complete, width in images), images
    assert errors == []
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []
    assert (ARTIFACTS / "report.png").stat().st_size > 10_000


def test_generated_study_with_a_known_order_declares_it_in_every_file(tmp_path, capsys):
    """Synthetic runs: Adam, AdamW and Nadam learn alike and fastest (benchmarks/synthetic.py)."""
    storage = f"journal:///{tmp_path}/study.journal"
    write_study(storage, 120, study_name="moons", race=True, seed=3)
    code, _out, err = _report(tmp_path, capsys, RACED, f"search.storage={storage}")
    assert code == 0, err
    summary = json.loads((tmp_path / "reports" / "summary.json").read_text())
    declared = summary["recommendation"]
    html = (tmp_path / "reports" / "index.html").read_text()
    assert html_escape(declared["sentence"]) in html
    assert declared["leader"] in ("adam", "adamw", "nadam")
    assert "sgd" not in declared["group"]
    assert set(declared["equivalent"]) <= {"adam", "adamw", "nadam"}
    # Each claim says its level: families at the race's conditions, or a setting.
    first = declared["conditions"][0]
    assert (
        f"batch {first['batch_size']} with the {first['schedule']} schedule"
        in (declared["sentence"])
    )
    assert "Claims about families hold at the batch sizes and schedules raced" in html
    # Family claims are at the families' default hyperparameters; a search trial to train with
    # says its own are the trial's, so a family ranked below its trial reads as no contradiction.
    assert "its other hyperparameters at their defaults" in declared["sentence"]
    # Slower means by more than the margin, the only thing a family is dropped for, in the
    # sentence and in the table alike.
    slower = [f for f in declared["families"] if f["status"] == "slower"]
    assert slower and "are more than 10% slower (probability >= 0.90 each)" in declared["sentence"]
    compact = html[html.index('<table class="compact">') :]
    compact = compact[: compact.index("</table>")]
    assert compact.count("family: &gt;10% slower (p ") == len(slower)
    own = "its other hyperparameters as that trial set them"
    assert (own in declared["sentence"]) == (declared["setting"]["kind"] == "setting")
    # ... and summary.json holds them all, as the setting's runs trained with them.
    assert declared["setting"]["params"]["optimizer"] == declared["setting"]["family"]
    assert declared["setting"]["params"]["batch_size"] == declared["setting"]["batch_size"]
    assert len(declared["setting"]["params"]) > 3
    table = pd.read_csv(tmp_path / "reports" / "recommendation.csv")
    assert table.family[0] == declared["leader"]
    for row, family in zip(table.itertuples(), declared["families"], strict=True):
        assert row.family == family["family"]
        assert family["success"] == f"{row.reached}/{row.replicates}"


def test_where_seeds_miss_the_target_the_report_says_how_often_before_how_fast(tmp_path, capsys):
    """A task some seeds fail (a fifth of the race's runs level off above any target): the
    sentence says in how many seeds the setting reaches the target before its median, the family
    claim says that misses weigh in the ranks, and the table counts the seeds that reach it."""
    families = ["sgd", "momentum", "adam", "nadam"]
    storage = f"journal:///{tmp_path}/study.journal"
    write_study(storage, 40, study_name="moons", families=families, race=True, stall=0.2, seed=2)
    code, _out, err = _report(
        tmp_path,
        capsys,
        RACED,
        f"search.storage={storage}",
        "search.n_trials=40",
        f"search.optimizers=[{','.join(families)}]",
    )
    assert code == 0, err
    declared = json.loads((tmp_path / "reports" / "summary.json").read_text())["recommendation"]
    reached, seeds = (int(n) for n in declared["setting"]["success"].split("/"))
    assert seeds // 2 < reached < seeds  # the case at hand: some seeds miss, most do not
    said = declared["sentence"]
    assert f"in {reached} of its {seeds} seeds, the median seed in " in said
    racing = [f for f in declared["families"] if f["status"] != "slower"]

    def share(success: str) -> float:  # "5/8"
        reach, of = success.split("/")
        return int(reach) / int(of)

    shares = sorted({f["success"] for f in racing}, key=share)
    assert share(shares[0]) < 1
    assert (
        "so these ranks weigh how often a family reaches it "
        f"({' to '.join([shares[0], shares[-1]] if len(shares) > 1 else shares)} seeds)"
    ) in said
    html = (tmp_path / "reports" / "index.html").read_text()
    compact = html[html.index('<table class="compact">') :]
    compact = compact[: compact.index("</table>")]
    for family in racing:
        assert f"{family['success']} seeds reach it" in compact
    assert "inf" not in compact  # an interval whose top seed misses reads "never"


def test_a_trial_killed_before_it_picked_a_batch_size_keeps_batch_sizes_whole(tmp_path, capsys):
    storage = f"sqlite:///{tmp_path}/study.db"
    study = write_study(storage, 20, study_name="moons")
    family = study.trials[0].distributions["optimizer"]
    study.add_trial(
        create_trial(
            state=TrialState.FAIL,
            params={"optimizer": "adam"},
            distributions={"optimizer": family},
            user_attrs={"stale": "worker h:1 died"},
        )
    )
    code, _out, err = _report(tmp_path, capsys, "race.seeds=[]")
    assert code == 0, err
    raw = pd.read_csv(tmp_path / "reports" / "recommendation.csv", dtype=str)
    assert raw.batch_size.str.fullmatch(r"\d+").all(), list(raw.batch_size)
    html = (tmp_path / "reports" / "index.html").read_text()
    summary = json.loads((tmp_path / "reports" / "summary.json").read_text())
    assert ".0)" not in summary["recommendation"]["sentence"]
    assert ">nan<" not in html and ">&lt;NA&gt;<" not in html


def _ended(number: int, state: TrialState = TrialState.COMPLETE, **attrs) -> FrozenTrial:
    trial = create_trial(
        state=state,
        value=0.1 if state == TrialState.COMPLETE else None,
        intermediate_values={1: 0.3} if state == TrialState.PRUNED else None,
        user_attrs=attrs,
    )
    trial.number = number
    return trial


def test_what_an_unfinished_study_lacks_by_hand():
    search = [_ended(0), _ended(1, TrialState.PRUNED)]
    # The search done, the race not planned yet: not final, unless it is turned off.
    left = unfinished(search, None, n_trials=2, racing=True)
    assert missing(left) == "the race has not started"
    assert unfinished(search, None, n_trials=2, racing=False) is None
    # The command's budget counts, not the study's first one: a rerun may raise it.
    assert missing(unfinished(search, None, n_trials=3, racing=False)) == (
        "the search has run 2 of its 3 trials"
    )
    # A race whose round 1 still needs runs, then one that has ended.
    arms = {"adam lr 0.01": Arm("adam lr 0.01", "family", "adam", {})}
    running = State(arms=arms, alive=list(arms), round=1, missing=[("adam lr 0.01", 3)])
    assert missing(unfinished(search, running, n_trials=2, racing=True)) == (
        "round 1 of the race still needs 1 runs"
    )
    ended = State(arms=arms, alive=list(arms), round=2, done=True)
    assert unfinished(search, ended, n_trials=2, racing=True) is None
