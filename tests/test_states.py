import dataclasses
import itertools

import pytest

from receiver.states import Decision, Status, decide

Q, P, C, F, X = Status.QUEUED, Status.PROCESSING, Status.COMPLETED, Status.FAILED, Status.CANCELED

# The whole table: (current, observed) -> new status, or None for "no change".
# An "!" marks the pairs that are kept as anomalies.
TABLE = {
    (None, Q): Q, (None, P): P, (None, C): C, (None, F): F, (None, X): X,
    (Q, Q): None, (Q, P): P, (Q, C): C, (Q, F): F, (Q, X): X,
    (P, Q): "!", (P, P): None, (P, C): C, (P, F): F, (P, X): X,
    (C, Q): "!", (C, P): "!", (C, C): None, (C, F): "!", (C, X): "!",
    (F, Q): "!", (F, P): "!", (F, C): "!", (F, F): None, (F, X): "!",
    (X, Q): "!", (X, P): "!", (X, C): "!", (X, F): "!", (X, X): None,
}  # fmt: skip


@pytest.mark.parametrize(("current", "observed"), list(TABLE))
def test_transition_table(current, observed):
    expected = TABLE[current, observed]
    decision = decide(current, observed)
    if expected == "!":
        assert decision.new is None
        assert decision.anomaly and str(current) in decision.anomaly
    elif expected is None:
        assert decision == Decision(new=None, anomaly=None)
    else:
        assert decision == Decision(new=expected, anomaly=None)


def test_table_covers_every_pair():
    pairs = set(itertools.product([None, *Status], Status))
    assert pairs == set(TABLE)


def test_terminal_states_are_absorbing():
    for terminal in (C, F, X):
        for observed in Status:
            assert decide(terminal, observed).new is None


def test_status_never_moves_backwards():
    order = [Q, P, C]
    for i, current in enumerate(order):
        for observed in order[:i]:
            assert decide(current, observed).new is None


def test_status_words_are_the_stored_and_served_ones():
    # Stored in the database and served by the API: renaming one breaks both.
    assert [s.value for s in Status] == ["queued", "processing", "completed", "failed", "canceled"]


def test_terminal_statuses():
    assert {s for s in Status if s.terminal} == {C, F, X}
    assert not Q.terminal and not P.terminal


def test_a_decision_cannot_be_changed_once_made():
    decision = decide(P, Q)
    with pytest.raises(dataclasses.FrozenInstanceError):
        decision.new = C  # type: ignore[misc]
    assert decision == Decision(new=None, anomaly="job is processing; ignored earlier state queued")
    assert decide(C, P).anomaly == "job is completed; ignored observed processing"
