from __future__ import annotations

import dataclasses
import math

import pytest

from shared.errors import InvalidInput
from shared.errors import RoutingError
from shared.routing import difficulty
from shared.routing import difficulty_estimate

MEDIUM_PROMPT = (
    "Can you explain how public-key cryptography works? I understand symmetric encryption, where both "
    "sides share one secret, but I am confused about the asymmetric kind. Why is it safe to publish the "
    "public key for anyone to see?"
)

HARD_PROMPT = """I need to design and implement an efficient algorithm for scheduling jobs on a cluster of
machines with different capacities. Please analyze its time complexity and compare it with a greedy baseline.

Requirements:
1. Each job has a duration, a deadline and a memory requirement.
2. A machine can run several jobs at once as long as their memory fits.
3. Minimize the number of missed deadlines, then the total completion time.

Here is my current attempt:

```python
def schedule(jobs, machines):
    for job in sorted(jobs, key=lambda j: j.deadline):
        best = min(machines, key=lambda m: m.load)
        best.assign(job)
```

Where does the greedy version fail, and how would you prove your version is optimal?"""


def test_weights_sum_to_one():
    total = difficulty.LENGTH_WEIGHT + difficulty.KEYWORDS_WEIGHT + difficulty.STRUCTURE_WEIGHT
    assert math.isclose(total, 1.0)


def test_documented_weights():
    weights = (difficulty.LENGTH_WEIGHT, difficulty.KEYWORDS_WEIGHT, difficulty.STRUCTURE_WEIGHT)
    assert weights == (0.4, 0.4, 0.2)


def test_score_is_the_weighted_sum_of_components():
    estimate = difficulty.estimate_difficulty(HARD_PROMPT)
    components = estimate.components
    expected = 0.4 * components["length"] + 0.4 * components["keywords"] + 0.2 * components["structure"]
    assert math.isclose(estimate.score, expected)


def test_components_are_length_keywords_structure():
    assert set(difficulty.estimate_difficulty("Hi").components) == {"length", "keywords", "structure"}


def test_simple_factual_question_is_easy():
    assert difficulty.estimate_difficulty("What is the capital of France?").level == "easy"


def test_greeting_is_easy():
    assert difficulty.estimate_difficulty("Hi").level == "easy"


def test_explanation_with_two_questions_is_medium():
    assert difficulty.estimate_difficulty(MEDIUM_PROMPT).level == "medium"


def test_long_multipart_algorithm_design_is_hard():
    assert difficulty.estimate_difficulty(HARD_PROMPT).level == "hard"


@pytest.mark.parametrize(
    "prompt",
    ["", "   \n\t ", "?" * 50_000, "word " * 100_000, "- item\n" * 10_000, "```\n" * 5_001, HARD_PROMPT * 50],
)
def test_score_and_components_stay_in_unit_interval(prompt):
    estimate = difficulty.estimate_difficulty(prompt)
    assert 0.0 <= estimate.score <= 1.0
    assert all(0.0 <= value <= 1.0 for value in estimate.components.values())


def test_estimate_is_deterministic():
    assert difficulty.estimate_difficulty(HARD_PROMPT) == difficulty.estimate_difficulty(HARD_PROMPT)


def test_estimate_is_frozen():
    estimate = difficulty.estimate_difficulty("Hi")
    with pytest.raises(dataclasses.FrozenInstanceError):
        estimate.score = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("score", "level"),
    [(0.0, "easy"), (0.3333, "easy"), (1 / 3, "medium"), (0.6666, "medium"), (2 / 3, "hard"), (1.0, "hard")],
)
def test_level_boundaries(score, level):
    assert difficulty_estimate.choose_level(score) == level


def test_length_is_near_zero_for_a_few_words():
    assert difficulty.estimate_length("Tell me a joke") < 0.1


def test_length_is_near_one_at_a_few_hundred_words():
    assert difficulty.estimate_length("word " * 300) > 0.95


def test_length_grows_with_words():
    assert difficulty.estimate_length("word " * 20) < difficulty.estimate_length("word " * 40)


def test_neutral_prompt_keywords_sit_middle_low():
    value = difficulty.estimate_keywords("Tell me a story about a dog")
    assert 0.2 <= value <= 0.4


def test_complex_keywords_raise_keywords_score():
    neutral = difficulty.estimate_keywords("Tell me about sorting")
    assert difficulty.estimate_keywords("Analyze the complexity of this sorting algorithm") > neutral + 0.3


def test_simple_keywords_lower_keywords_score():
    neutral = difficulty.estimate_keywords("Tell me about France")
    assert difficulty.estimate_keywords("What is the capital of France") < neutral


def test_keywords_match_case_insensitively():
    assert difficulty.estimate_keywords("ANALYZE THIS") == difficulty.estimate_keywords("analyze this")


def test_keywords_match_whole_words_only():
    # "design" inside "designation" and "hi" inside "this" are not keywords.
    assert difficulty.estimate_keywords("the designation of this") == difficulty.KEYWORDS_NEUTRAL


def test_multi_word_phrase_matches_across_whitespace():
    assert difficulty.estimate_keywords("walk me through it step\nby  step") > difficulty.KEYWORDS_NEUTRAL


def test_curly_apostrophe_matches_simple_term():
    assert difficulty.estimate_keywords("what\u2019s up") < difficulty.KEYWORDS_NEUTRAL


def test_repeating_a_keyword_counts_once():
    assert difficulty.estimate_keywords("design") == difficulty.estimate_keywords("design design design")


def test_plain_sentence_has_no_structure():
    assert difficulty.estimate_structure("Tell me a story about a dog.") == 0.0


def test_single_question_adds_no_structure():
    assert difficulty.estimate_structure("Why is the sky blue?") == 0.0


def test_several_questions_add_structure():
    assert difficulty.estimate_structure("Why? How? When?") > 0.0


def test_list_items_add_structure():
    assert difficulty.estimate_structure("Do this:\n- one\n* two\n1. three") > 0.3


def test_fenced_code_block_adds_structure():
    assert difficulty.estimate_structure("Fix this:\n```\nx = 1\n```") > 0.4


def test_indented_code_after_blank_line_adds_structure():
    assert difficulty.estimate_structure("Fix this:\n\n    x = 1\n    y = 2") > 0.4


def test_paragraphs_add_structure():
    assert difficulty.estimate_structure("First part.\n\nSecond part.\n\nThird part.") > 0.0


def test_structure_saturates_below_one():
    assert difficulty.estimate_structure("```\ncode\n```\n" * 100) <= 1.0


def test_get_estimator_returns_registered_heuristic():
    assert isinstance(difficulty.get_estimator("heuristic"), difficulty.HeuristicEstimator)


def test_get_estimator_caches_instances():
    assert difficulty.get_estimator("heuristic") is difficulty.get_estimator("heuristic")


def test_heuristic_estimator_is_named_heuristic():
    assert difficulty.get_estimator("heuristic").name == "heuristic"


def test_unknown_estimator_raises_routing_error():
    with pytest.raises(RoutingError) as excinfo:
        difficulty.get_estimator("oracle")
    assert excinfo.value.details["field"] == "estimator"


def test_estimate_difficulty_uses_named_estimator():
    estimate = difficulty.estimate_difficulty("Hi", estimator="heuristic")
    assert estimate == difficulty.HeuristicEstimator().estimate("Hi")


def test_non_string_prompt_raises_invalid_input():
    with pytest.raises(InvalidInput):
        difficulty.estimate_difficulty(42)  # type: ignore[arg-type]
