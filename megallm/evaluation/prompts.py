"""Few-shot prompts: how demonstrations and a query become one text, and where the answer goes.

One format for every task:

    demo 1 input + " " + demo 1 answer
    (blank line)
    demo 2 input + " " + demo 2 answer
    (blank line)
    query input                         <- the prompt ends here

An example's answer is its target (generation) or its gold choice (multiple choice). The
model continues the prompt with SEPARATOR + answer: multiple-choice scoring compares the
log-likelihoods of `continuation(choice)` = " " + choice for each choice, and a generated
answer is the completion with its leading space stripped. Inputs of the tasks that
tools/make_eval_data.py writes end with a cue such as "German:" or "Category:" and hold no
blank line, so the blank lines between demonstrations are unambiguous.
"""

from __future__ import annotations

from typing import Optional, Sequence

from megallm.evaluation.tasks import Example

SEPARATOR = " "          # between an input and its answer
DEMO_SEPARATOR = "\n\n"  # between demonstrations, and before the query


def answer_of(example: Example) -> str:
    """The right answer: the target of a generation example, the gold choice of a multiple-choice one."""
    if example.target is not None:
        return example.target
    if example.choices is not None and example.gold is not None:
        return example.choices[example.gold]
    raise ValueError(f"example {example.id or example.input[:40]!r} has neither a target nor a gold choice")


def continuation(answer: str) -> str:
    """What the model is scored on (or generates) after a prompt: SEPARATOR + answer."""
    return SEPARATOR + answer


def format_example(example: Example, answer: Optional[str]) -> str:
    """The example's input followed by `continuation(answer)`; the input alone when `answer` is None."""
    return example.input if answer is None else example.input + continuation(answer)


def few_shot_prompt(demos: Sequence[Example], query: Example) -> str:
    """Each demonstration with its answer, then the query without one, joined by blank lines."""
    return DEMO_SEPARATOR.join([format_example(d, answer_of(d)) for d in demos] + [format_example(query, None)])
