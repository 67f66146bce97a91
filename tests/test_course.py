"""The checks of the notebook course's exercises (tinygrad_gpt/course/): for every exercise of
every notebook, the worked answer passes its check (returns True), the placeholder a
learner starts from is "not answered yet" (returns False, raises nothing), and each wrong
answer listed beside it fails (AssertionError naming the problem). So a learner's correct
answer is accepted and a wrong one is caught, whatever the notebook's cells print."""
import importlib

import pytest

from tinygrad_gpt.course import MODULES

EXERCISES = [(name, i) for name in MODULES
             for i in range(len(importlib.import_module(f"tinygrad_gpt.course.{name}").CHECKS))]


def exercise(name, i):
    return importlib.import_module(f"tinygrad_gpt.course.{name}").CHECKS[i]


@pytest.mark.parametrize("name", MODULES)
def test_every_notebook_has_exercises(name):
    assert len(importlib.import_module(f"tinygrad_gpt.course.{name}").CHECKS) >= 1


@pytest.mark.parametrize("name, i", EXERCISES)
def test_the_worked_answer_passes(name, i, capsys):
    check, answer, _ = exercise(name, i)
    assert check(answer) is True
    assert "correct" in capsys.readouterr().out.lower()


@pytest.mark.parametrize("name, i", EXERCISES)
def test_the_placeholder_is_not_answered_yet(name, i, capsys):
    check, _, _ = exercise(name, i)
    assert check(None) is False
    assert "not answered yet" in capsys.readouterr().out


@pytest.mark.parametrize("name, i", EXERCISES)
def test_wrong_answers_fail_with_a_reason(name, i):
    check, _, wrong = exercise(name, i)
    assert wrong, "every exercise lists at least one wrong answer"
    for answer in wrong:
        with pytest.raises(AssertionError) as error:
            check(answer)
        assert str(error.value).strip(), "the failure says what is wrong"
