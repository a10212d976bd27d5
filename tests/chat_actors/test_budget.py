"""Token budget: unit cases and hypothesis properties over random histories."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from chat_actors.budget import Budget, build_prompt, check_message, trim_history
from core.errors import BudgetError, ContextOverflow, MessageTooLong
from core.settings import load_settings


@dataclass(frozen=True)
class Msg:
    role: str
    tokens: int
    ident: int = 0


def budget(window: int = 1000, reserve: int = 200, margin: int = 50, max_msg: int = 400) -> Budget:
    return Budget(context_window=window, answer_reserve=reserve, margin=margin,
                  max_message_tokens=max_msg, priming=3)


def test_for_model_reads_settings() -> None:
    s = load_settings(token_margin=10, max_message_tokens=500)
    b = Budget.for_model(s, "gpt-4")
    assert (b.context_window, b.answer_reserve, b.margin, b.max_message_tokens) == (
        8192, 4096, 10, 500)
    assert b.prompt_limit == 8192 - 4096 - 10 - 3
    assert Budget.for_model(s, "no-such-model").context_window == s.unknown_model.context_window


def test_oldest_turns_leave_first_system_stays() -> None:
    b = budget()  # prompt limit 747
    history = [Msg("system", 100, 0), Msg("user", 300, 1), Msg("assistant", 200, 2),
               Msg("system", 20, 3), Msg("user", 100, 4), Msg("assistant", 200, 5)]
    current = Msg("user", 100, 6)
    prompt = build_prompt(history, current, b)
    # system 120 + current 100 = 220; room 527: turns 5 (200), 4 (100), 2 (200) fit = 500; 1 not.
    assert [m.ident for m in prompt.messages] == [0, 2, 3, 4, 5, 6]
    assert prompt.left_out == 1
    assert prompt.tokens == 100 + 200 + 20 + 100 + 200 + 100 + 3


def test_message_over_max_message_tokens_is_refused() -> None:
    with pytest.raises(MessageTooLong) as info:
        check_message([], 401, budget())
    assert info.value.limit == 400 and info.value.tokens == 401
    assert "400" in str(info.value)
    assert isinstance(info.value, BudgetError) and info.value.code == "too_long"


def test_message_that_does_not_fit_beside_system_messages_is_refused() -> None:
    history = [Msg("system", 500)]
    with pytest.raises(MessageTooLong) as info:
        build_prompt(history, Msg("user", 300), budget())
    assert info.value.limit == 747 - 500


def test_system_messages_alone_overflowing_is_context_overflow() -> None:
    with pytest.raises(ContextOverflow) as info:
        build_prompt([Msg("system", 748)], Msg("user", 1), budget())
    assert info.value.code == "context_overflow"


def test_trim_keeps_pairs_consistent() -> None:
    b = budget()  # limit 747
    history = [Msg("user", 300, 0), Msg("assistant", 300, 1), Msg("user", 200, 2),
               Msg("assistant", 200, 3), Msg("user", 100, 4), Msg("assistant", 100, 5)]
    plan = trim_history(history, b)
    # Suffix fitting 747: 5,4,3,2 = 600; + 1 (300) no. Start at 2 (user): drop 0, 1.
    assert plan.drop == [0, 1]
    history2 = [Msg("user", 100, 0), Msg("assistant", 300, 1), Msg("user", 400, 2),
                Msg("assistant", 300, 3)]
    plan2 = trim_history(history2, b)
    # Fits: 3, 2 = 700; 1 would be 1000. Kept head would be 2 (user): drop 0 and 1.
    assert plan2.drop == [0, 1]
    history3 = [Msg("user", 500, 0), Msg("assistant", 100, 1), Msg("user", 300, 2),
                Msg("assistant", 300, 3)]
    plan3 = trim_history(history3, b)
    # Fits: 3, 2, 1 = 700; head would be assistant 1 whose question 0 is dropped: drop it too.
    assert plan3.drop == [0, 1]
    assert [m.ident for m in plan3.keep] == [2, 3]


def test_trim_never_drops_the_last_exchange() -> None:
    history = [Msg("system", 10), Msg("user", 400, 1), Msg("assistant", 700, 2)]
    plan = trim_history(history, budget())
    assert plan.drop == []


# ---- properties -------------------------------------------------------------------------
# Two kinds of examples. Chat-shaped ones (alternating user/assistant turns, a few system
# messages anywhere, a budget that always has room beside the system messages, often less
# than the turns need) reach the trimming code; ``event()`` labels each example's path, so
# ``pytest --hypothesis-show-statistics`` shows how many did. Arbitrary ones (any roles, any
# budget) mostly end in a refusal, whose reason is checked.

roles = st.sampled_from(["system", "user", "assistant"])
any_histories = st.lists(
    st.tuples(roles, st.integers(min_value=1, max_value=400)), max_size=40
).map(lambda items: [Msg(r, t, i) for i, (r, t) in enumerate(items)])
any_budgets = st.builds(
    budget,
    window=st.integers(min_value=100, max_value=5000),
    reserve=st.integers(min_value=0, max_value=1000),
    margin=st.integers(min_value=0, max_value=100),
    max_msg=st.integers(min_value=1, max_value=2000),
)


@st.composite
def chat_histories(draw: st.DrawFn) -> list[Msg]:
    """Turns alternating user / assistant (from a user message), system messages among them."""
    tokens = st.integers(min_value=1, max_value=400)
    turns = [("user" if i % 2 == 0 else "assistant", draw(tokens))
             for i in range(draw(st.integers(min_value=0, max_value=30)))]
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        at = draw(st.integers(min_value=0, max_value=len(turns)))
        turns.insert(at, ("system", draw(st.integers(min_value=1, max_value=200))))
    return [Msg(role, t, i) for i, (role, t) in enumerate(turns)]


@st.composite
def budgets_with_room(draw: st.DrawFn, fixed: int, history: list[Msg],
                      least_max_msg: int = 1) -> Budget:
    """A budget whose prompt limit is ``fixed`` plus a room for the turns, mostly less than
    they need (trimming), sometimes all of it."""
    need = sum(m.tokens for m in history if m.role != "system")
    room = draw(st.integers(min_value=0, max_value=need + 50))
    reserve = draw(st.integers(min_value=0, max_value=1000))
    margin = draw(st.integers(min_value=0, max_value=100))
    max_msg = draw(st.integers(min_value=least_max_msg, max_value=2000))
    b = budget(window=fixed + room + reserve + margin + 3, reserve=reserve, margin=margin,
               max_msg=max_msg)
    assert b.prompt_limit == fixed + room
    return b


def is_subsequence(part: list[Msg], whole: list[Msg]) -> bool:
    it = iter(whole)
    return all(any(m is w for w in it) for m in part)


def check_prompt(history: list[Msg], current: Msg, b: Budget) -> None:
    sys_tokens = sum(m.tokens for m in history if m.role == "system")
    try:
        prompt = build_prompt(history, current, b)
    except ContextOverflow:
        event("prompt: refused, system messages overflow")
        assert sys_tokens > b.prompt_limit
        return
    except MessageTooLong:
        event("prompt: refused, message too long")
        assert (current.tokens > b.max_message_tokens
                or sys_tokens + current.tokens > b.prompt_limit)
        return
    msgs = prompt.messages
    # never over budget
    assert sum(m.tokens for m in msgs) <= b.prompt_limit
    assert prompt.tokens <= b.context_window - b.answer_reserve - b.margin
    # never drops a system message nor the message being answered; the latter comes last
    assert all(any(m is s for m in msgs) for s in history if s.role == "system")
    assert msgs[-1] is current
    # never reorders
    assert is_subsequence(msgs, [*history, current])
    # kept turns are a suffix of the turns (oldest leave first) ...
    turns = [m for m in history if m.role != "system"]
    kept = [m for m in msgs[:-1] if m.role != "system"]
    assert kept == turns[len(turns) - len(kept):]
    assert prompt.left_out == len(turns) - len(kept)
    # ... and maximal: the next-older turn would not have fit
    if len(kept) < len(turns):
        event("prompt: trimmed (older turns left out)")
        next_older = turns[len(turns) - len(kept) - 1]
        assert sum(m.tokens for m in msgs) + next_older.tokens > b.prompt_limit
    else:
        event("prompt: every turn fits")


@settings(max_examples=400, deadline=None)
@given(data=st.data(), history=chat_histories(), current_tokens=st.integers(1, 600))
def test_prompt_properties(data: st.DataObject, history: list[Msg], current_tokens: int) -> None:
    sys_tokens = sum(m.tokens for m in history if m.role == "system")
    b = data.draw(budgets_with_room(sys_tokens + current_tokens, history, current_tokens))
    check_prompt(history, Msg("user", current_tokens, len(history)), b)


@settings(max_examples=200, deadline=None)
@given(history=any_histories, current_tokens=st.integers(min_value=1, max_value=600),
       b=any_budgets)
def test_prompt_properties_any_history_any_budget(
    history: list[Msg], current_tokens: int, b: Budget
) -> None:
    check_prompt(history, Msg("user", current_tokens, len(history)), b)


def check_trim(history: list[Msg], b: Budget, keep_last: int) -> None:
    plan = trim_history(history, b, keep_last=keep_last)
    turns = [i for i, m in enumerate(history) if m.role != "system"]
    # drops only turns, oldest first, never the protected newest ones
    assert plan.drop == turns[: len(plan.drop)]
    assert len(plan.drop) <= max(0, len(turns) - keep_last)
    assert [m for i, m in enumerate(history) if i not in plan.drop] == plan.keep
    kept_turns = [m for m in plan.keep if m.role != "system"]
    protected = min(keep_last, len(turns))
    if plan.drop and len(kept_turns) > protected:
        # no orphan answer at the head
        assert kept_turns[0].role != "assistant"
    # minimal: a turn that still fits beside the system messages is dropped only as part of a
    # run of orphan answers at the head of what fits
    room = b.prompt_limit - sum(m.tokens for m in history if m.role == "system")
    used, fitting = 0, 0
    for i in reversed(turns):
        if used + history[i].tokens > room:
            break
        used += history[i].tokens
        fitting += 1
    suffix = turns[len(turns) - fitting:]
    dropped_from_suffix = [i for i in suffix if i in plan.drop]
    assert all(history[i].role == "assistant" for i in dropped_from_suffix)
    assert dropped_from_suffix == suffix[: len(dropped_from_suffix)]
    # ... and enough: every unprotected turn outside the fitting suffix is dropped, and what
    # is kept fits unless the protected newest turns alone do not
    fit_start, unprotected = len(turns) - fitting, max(0, len(turns) - keep_last)
    assert len(plan.drop) >= min(fit_start, unprotected)
    if fit_start > unprotected:
        event("trim: dropped all but the protected turns, which alone overflow")
        assert plan.drop == turns[:unprotected]
    elif plan.drop:
        assert sum(m.tokens for m in kept_turns) <= max(room, 0)
        event("trim: dropped" + (", an orphan answer too" if dropped_from_suffix else ""))
    else:
        event("trim: nothing to drop")


@settings(max_examples=400, deadline=None)
@given(data=st.data(), history=chat_histories(), keep_last=st.integers(min_value=0, max_value=4))
def test_trim_properties(data: st.DataObject, history: list[Msg], keep_last: int) -> None:
    sys_tokens = sum(m.tokens for m in history if m.role == "system")
    b = data.draw(budgets_with_room(sys_tokens, history))
    check_trim(history, b, keep_last)


@settings(max_examples=200, deadline=None)
@given(history=any_histories, b=any_budgets, keep_last=st.integers(min_value=0, max_value=4))
def test_trim_properties_any_history_any_budget(
    history: list[Msg], b: Budget, keep_last: int
) -> None:
    check_trim(history, b, keep_last)
