"""The store's up/down state (controller.store.availability): while the database is
unreachable, calls fail at once except one trial per interval, or when the pool has an idle
connection again. Time moves through twisted.internet.task.Clock."""

from __future__ import annotations

from twisted.internet.task import Clock

from controller.store.availability import RETRY_INTERVAL, Admission, Availability


def idle() -> bool:
    return True


def none_idle() -> bool:
    return False


def test_an_available_store_lets_every_call_wait_for_a_connection() -> None:
    availability = Availability(clock=Clock().seconds)
    assert availability.admit(none_idle) is Admission.WAIT
    assert not availability.down


def test_once_down_calls_are_refused_until_the_interval_has_passed() -> None:
    clock = Clock()
    availability = Availability(clock=clock.seconds)
    assert availability.failed("no connection within 0.5 s")
    assert availability.down and availability.problem == "no connection within 0.5 s"
    assert [availability.admit(none_idle) for _ in range(3)] == [Admission.REFUSE] * 3
    clock.advance(RETRY_INTERVAL * 0.9)
    assert availability.admit(none_idle) is Admission.REFUSE


def test_one_call_per_interval_is_a_trial() -> None:
    clock = Clock()
    availability = Availability(clock=clock.seconds)
    availability.failed("down")
    clock.advance(RETRY_INTERVAL)
    assert availability.admit(none_idle) is Admission.TRY
    assert availability.admit(none_idle) is Admission.REFUSE
    clock.advance(RETRY_INTERVAL)
    assert availability.admit(none_idle) is Admission.TRY


def test_a_failed_trial_puts_the_next_one_an_interval_later() -> None:
    clock = Clock()
    availability = Availability(clock=clock.seconds)
    availability.failed("down")
    clock.advance(RETRY_INTERVAL * 0.6)
    assert not availability.failed("still down")  # already down
    clock.advance(RETRY_INTERVAL * 0.6)
    assert availability.admit(none_idle) is Admission.REFUSE
    clock.advance(RETRY_INTERVAL * 0.4)
    assert availability.admit(none_idle) is Admission.TRY


def test_an_idle_connection_in_the_pool_lets_a_call_try_at_once() -> None:
    availability = Availability(clock=Clock().seconds)
    availability.failed("down")
    assert availability.admit(idle) is Admission.TRY


def test_the_idle_connection_look_is_made_only_while_down() -> None:
    looks: list[str] = []

    def look() -> bool:
        looks.append("look")
        return False

    availability = Availability(clock=Clock().seconds)
    availability.admit(look)
    assert looks == []
    availability.failed("down")
    availability.admit(look)
    assert looks == ["look"]


def test_a_success_makes_it_up_again_and_says_how_long_it_was_down() -> None:
    clock = Clock()
    availability = Availability(clock=clock.seconds)
    assert availability.succeeded() is None
    availability.failed("down")
    clock.advance(3.5)
    assert availability.succeeded() == 3.5
    assert not availability.down and availability.problem == ""
    assert availability.admit(none_idle) is Admission.WAIT


def test_the_pools_give_up_after_a_success_is_old_news() -> None:
    """The pool reports a reconnection that failed for `attempt_seconds`: if a call succeeded
    within that time, the attempt began before it, and the store stays up."""
    clock = Clock()
    availability = Availability(clock=clock.seconds)
    assert availability.failed_in_background("the pool could not connect", 1.0)
    availability.succeeded()
    clock.advance(0.9)
    assert not availability.failed_in_background("the pool could not connect", 1.0)
    assert not availability.down
    clock.advance(0.2)
    assert availability.failed_in_background("the pool could not connect", 1.0)
    assert availability.down
