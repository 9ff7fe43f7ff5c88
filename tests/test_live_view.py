"""The live view's line per report: counts and best values right after a resume, at O(1) cost per report."""

from ray.tune.experiment import Trial

from sslsearch.search.sweep import LiveView


def trial(loss: str, status: str, reports: tuple = ()) -> Trial:
    t = Trial("synthetic", stub=True, config={"loss": loss, "lmbda": 0.01, "lr": 1e-3, "feature_dim": 128,
                                              "base": {"loss": loss}})
    for epoch, val_acc in reports:
        t.update_last_result({"epoch": epoch, "val_acc": val_acc})
    t.set_status(status)
    return t


def report(view: LiveView, trials: list, t: Trial, epoch: int, val_acc: float) -> None:
    result = {"epoch": epoch, "val_acc": val_acc}
    view.on_trial_result(0, trials, t, result)
    t.update_last_result(result)  # after the callbacks, as Ray's controller does


def test_live_view_counts_running_and_finished_trials_and_keeps_earlier_sessions_best(capsys):
    # A resumed sweep: two trials ended in an earlier session (one with the best barlow report so far),
    # one paused there, and 40 not started yet.
    earlier = [trial("barlow", Trial.TERMINATED, ((0, 10.0), (10, 71.0))), trial("hsic", Trial.ERROR, ((0, 10.0),)),
               trial("hsic", Trial.PAUSED, ((0, 10.0), (10, 64.0)))]
    trials = earlier + [trial("barlow", Trial.PENDING) for _ in range(40)]
    view = LiveView()
    view.setup()
    first, second = trials[3], trials[4]
    for t in (first, second, earlier[2]):
        view.on_trial_start(0, trials, t)
        t.set_status(Trial.RUNNING)
    report(view, trials, first, 0, 10.0)
    assert ("| running 3, paused 0, pending 38, finished 2 | best report, any epoch: barlow 71.00  hsic 64.00"
            in capsys.readouterr().out)

    report(view, trials, second, 10, 75.0)
    second.set_status(Trial.TERMINATED)
    view.on_trial_complete(0, trials, second)
    earlier[2].set_status(Trial.PAUSED)   # paused at a rung: live, not running
    report(view, trials, first, 10, 60.0)
    lines = capsys.readouterr().out.splitlines()
    assert "| running 3, paused 0, pending 38, finished 2 | best report, any epoch: barlow 75.00  hsic 64.00" in lines[0]
    assert lines[1].endswith(f"{second.trial_id} barlow λ=0.01 lr=0.001 d=128 finished at epoch 10")
    assert "| running 1, paused 1, pending 38, finished 3 | best report, any epoch: barlow 75.00  hsic 64.00" in lines[2]


class NoScan(list):
    def __iter__(self):
        raise AssertionError("the live view went through every trial for one report")


def test_live_view_goes_through_all_trials_once_per_session_not_at_every_report(capsys):
    trials = [trial("barlow", Trial.TERMINATED, ((10, 70.0),))] + [trial("hsic", Trial.PENDING) for _ in range(3)]
    view = LiveView()
    view.setup()
    view.on_trial_start(0, trials, trials[1])
    trials[1].set_status(Trial.RUNNING)
    report(view, trials, trials[1], 0, 10.0)          # the session's first report: one pass over the trials
    unscannable = NoScan(trials)
    for epoch in (10, 20, 30):
        report(view, unscannable, trials[1], epoch, 50.0 + epoch)
    view.on_trial_complete(0, unscannable, trials[1])
    assert ("| running 1, paused 0, pending 2, finished 1 | best report, any epoch: barlow 70.00  hsic 80.00"
            in capsys.readouterr().out)


def test_live_view_says_how_many_trials_are_left_of_the_total_ray_passes(capsys):
    trials = [trial("barlow", Trial.TERMINATED, ((10, 70.0),))] + [trial("hsic", Trial.PENDING) for _ in range(3)]
    view = LiveView()
    view.setup(total_num_samples=4)   # what Ray's controller passes every callback: the search's total
    view.on_trial_start(0, trials, trials[1])
    trials[1].set_status(Trial.RUNNING)
    report(view, trials, trials[1], 0, 10.0)
    assert "| running 1, paused 0, pending 2, finished 1, left 3 | best report" in capsys.readouterr().out
