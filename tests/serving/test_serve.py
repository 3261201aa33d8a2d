"""The entry point's watch over the microservice's processes, on made-up process sets."""

from __future__ import annotations

from mlops_template.serving.serve import Watch

SETTLE, GRACE = 1.0, 2.0
STARTED = {10, 11, 12, 13, 14}


def settled_watch() -> Watch:
    """A watch that has seen five children hold still."""
    watch = Watch(SETTLE, GRACE)
    for now in (0.0, 0.5, 1.0):
        assert watch.observe(STARTED, now) == set()
    assert watch.full == STARTED
    return watch


def test_children_appearing_one_by_one_become_the_full_strength_once_still() -> None:
    watch = Watch(SETTLE, GRACE)
    for now, children in enumerate([set(), {10}, {10, 11}, STARTED]):
        assert watch.observe(children, now * 0.5) == set()
    assert watch.full == set()
    assert watch.observe(STARTED, 2.5) == set()
    assert watch.full == STARTED


def test_a_worker_replaced_within_the_grace_is_no_loss() -> None:
    watch = settled_watch()
    assert watch.observe(STARTED - {13}, 1.5) == set()
    replaced = STARTED - {13} | {20}
    assert watch.observe(replaced, 2.0) == set()
    assert watch.full == replaced
    assert watch.observe(replaced - {14}, 10.0) == set()


def test_a_process_missing_for_longer_than_the_grace_is_lost() -> None:
    watch = settled_watch()
    for now in (1.5, 2.0, 3.0, 3.5):
        assert watch.observe(STARTED - {12}, now) == set()
    assert watch.observe(STARTED - {12}, 1.5 + GRACE + 0.5) == {12}


def test_a_short_dip_restarts_the_grace() -> None:
    watch = settled_watch()
    assert watch.observe(STARTED - {12}, 1.5) == set()
    assert watch.observe(STARTED - {12} | {21}, 3.0) == set()
    assert watch.observe(STARTED - {12, 13} | {21}, 4.0) == set()
    assert watch.observe(STARTED - {12, 13} | {21}, 4.0 + GRACE + 0.5) == {13}


def test_a_brief_extra_process_does_not_raise_the_full_strength() -> None:
    watch = settled_watch()
    assert watch.observe(STARTED | {30}, 1.5) == set()
    assert watch.observe(STARTED, 2.0) == set()
    assert watch.full == STARTED
    assert watch.observe(STARTED, 10.0) == set()
