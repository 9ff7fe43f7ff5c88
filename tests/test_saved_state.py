"""The intact copy of Ray's saved state (sslsearch.search.saved_state): what the copy takes and skips, and how
`resume` recovers from a truncated state file. The full-disk sweep itself is tests/test_faults.py's."""

import json
import os
import time

import pytest
import ray.cloudpickle as cloudpickle

from sslsearch.errors import InputError
from sslsearch.search.saved_state import INTACT_FOLDER, IntactStateCopy, recover_saved_state

SESSION = "2026-11-30_10-00-00"


def _save(folder, session=SESSION, trials=("a", "b"), generator="search_gen_state"):
    """Ray's files of one save, with its names and formats (JSON; pickles, one of them named .json). `generator`:
    a sweep's (search_gen_state, for its searcher) or a confirmation stage's (basic-variant-state, for its points)."""
    (folder / f"experiment_state-{session}.json").write_text(json.dumps({"trial_data": list(trials)}))
    (folder / f"searcher-state-{session}.pkl").write_bytes(cloudpickle.dumps({"searcher": list(trials)}))
    (folder / f"{generator}-{session}.json").write_bytes(cloudpickle.dumps({"counter": len(trials)}))


def _truncate(path, keep=10):
    path.write_bytes(path.read_bytes()[:keep])


def test_the_copy_takes_complete_files_and_skips_cut_ones(tmp_path):
    _save(tmp_path)
    copy = IntactStateCopy(str(tmp_path), every_s=0)
    copy.on_experiment_end([])
    intact = tmp_path / INTACT_FOLDER
    assert sorted(os.listdir(intact)) == sorted(p.name for p in tmp_path.iterdir() if p.is_file())
    good = (intact / f"experiment_state-{SESSION}.json").read_bytes()
    time.sleep(0.01)
    _save(tmp_path, trials=("a", "b", "c"))
    _truncate(tmp_path / f"experiment_state-{SESSION}.json")   # cut short while being copied in
    copy.on_trial_result(0, [], None, {})
    assert (intact / f"experiment_state-{SESSION}.json").read_bytes() == good
    assert json.loads((intact / f"experiment_state-{SESSION}.json").read_text()) == {"trial_data": ["a", "b"]}
    # the pickles were complete: the copy is per file, each file intact
    assert cloudpickle.loads((intact / f"searcher-state-{SESSION}.pkl").read_bytes()) == {"searcher": ["a", "b", "c"]}
    assert not [p for p in intact.iterdir() if p.name.endswith(".tmp")]


def test_the_copy_keeps_only_the_newest_session(tmp_path):
    _save(tmp_path, "2026-11-30_10-00-00")
    copy = IntactStateCopy(str(tmp_path), every_s=0)
    copy.on_experiment_end([])
    _save(tmp_path, "2026-11-30_11-00-00")
    copy.on_experiment_end([])
    assert sorted(os.listdir(tmp_path / INTACT_FOLDER)) == [
        "experiment_state-2026-11-30_11-00-00.json", "search_gen_state-2026-11-30_11-00-00.json",
        "searcher-state-2026-11-30_11-00-00.pkl"]


def test_resume_puts_the_intact_copy_in_place_of_a_cut_state_and_keeps_the_damaged_files(tmp_path, capsys):
    _save(tmp_path)
    IntactStateCopy(str(tmp_path), every_s=0).on_experiment_end([])
    broken = tmp_path / f"experiment_state-{SESSION}.json"
    _truncate(broken)
    damaged = broken.read_bytes()
    recover_saved_state(tmp_path, "s")
    assert json.loads(broken.read_text()) == {"trial_data": ["a", "b"]}
    assert (tmp_path / f"damaged-state-{SESSION}" / broken.name).read_bytes() == damaged
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cut short" in err[0] and "last intact copy" in err[0]


def test_a_confirmation_stages_cut_list_of_points_is_recovered_too(tmp_path, capsys):
    """The stage's BasicVariantGenerator saves basic-variant-state-*.json (a pickle); cut short by a full disk, Ray
    failed to restore the stage and restarted it with no search space (CI of 2026-12-07: KeyError 'feature_dim')."""
    _save(tmp_path, generator="basic-variant-state")
    IntactStateCopy(str(tmp_path), every_s=0).on_experiment_end([])
    assert (tmp_path / INTACT_FOLDER / f"basic-variant-state-{SESSION}.json").is_file()
    broken = tmp_path / f"basic-variant-state-{SESSION}.json"
    _truncate(broken)
    recover_saved_state(tmp_path, "s")
    assert cloudpickle.loads(broken.read_bytes()) == {"counter": 2}
    assert (tmp_path / f"damaged-state-{SESSION}" / broken.name).is_file()
    assert "cut short" in capsys.readouterr().err


def test_resume_leaves_an_intact_state_alone(tmp_path, capsys):
    _save(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    recover_saved_state(tmp_path, "s")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("which", ["experiment_state-{}.json", "searcher-state-{}.pkl", "basic-variant-state-{}.json"])
def test_resume_refuses_a_cut_state_without_an_intact_copy(tmp_path, which):
    _save(tmp_path, generator="basic-variant-state" if which.startswith("basic") else "search_gen_state")
    _truncate(tmp_path / which.format(SESSION))
    with pytest.raises(InputError) as raised:
        recover_saved_state(tmp_path, "s")
    message = str(raised.value)
    assert "\n" not in message and which.format(SESSION) in message and "damaged" in message
