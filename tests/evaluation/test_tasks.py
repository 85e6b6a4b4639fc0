"""Task files (megallm.evaluation.tasks) and few-shot prompts (megallm.evaluation.prompts)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from megallm.errors import DataError
from megallm.evaluation.prompts import answer_of, continuation, few_shot_prompt, format_example
from megallm.evaluation.tasks import Example, read_task, write_task
from tests.helpers import REPO

FIXTURES = REPO / "tests" / "fixtures" / "eval"
MC = '{"input": "Q", "choices": ["a", "b", "c"], "gold": 1}'
GEN = '{"input": "Q", "target": "T"}'


def test_reads_the_fixture_tasks():
    mc = read_task(FIXTURES / "fortune_category.jsonl")
    assert (mc.name, mc.kind, mc.metrics) == ("fortune_category", "multiple_choice", ("accuracy",))
    assert len(mc.examples) == 46 and mc.examples[0].choices == ("computers", "food", "law", "science")
    assert all(e.input.startswith("Fortune: ") and e.input.endswith("\nCategory:") for e in mc.examples)
    translation = read_task(FIXTURES / "translation_en_de.jsonl")
    assert (translation.kind, translation.metrics) == ("generation", ("bleu",))
    for name in ("package_summary", "docstring"):
        task = read_task(FIXTURES / f"{name}.jsonl")
        assert (task.name, task.kind, task.metrics, len(task.examples)) == (name, "generation", ("bleu", "rouge"), 48)


def test_names_and_ids_default_to_the_file(tmp_path):
    path = tmp_path / "quiz.jsonl"
    path.write_text(f'{MC}\n\n{{"input": "R", "choices": ["x", "y"], "gold": 0, "id": "r1"}}\n')
    task = read_task(path)
    assert task.name == "quiz" and task.path == path
    assert [e.id for e in task.examples] == ["quiz.jsonl:1", "r1"]  # the blank line 2 is skipped
    assert task.examples[0] == Example("Q", choices=("a", "b", "c"), gold=1, id="quiz.jsonl:1")
    assert read_task(path, name="other").name == "other"


def test_write_task_round_trips(tmp_path):
    examples = (Example("E: a\nG:", target="b", id="1"), Example("E: c\nG:", target="d", id="2"))
    task = read_task(write_task(tmp_path / "t.jsonl", examples, name="named", metrics=["rouge"]))
    assert (task.name, task.examples, task.metrics) == ("named", examples, ("rouge",))


@pytest.mark.parametrize("lines, line, message", [
    (['{"input": "Q", "target": "T"', GEN], 1, "not JSON (Expecting ',' delimiter at column 29)"),
    ([GEN, "[1, 2]"], 2, "a JSON list, not an object"),
    (['{"target": "T"}'], 1, 'missing "input"'),
    (['{"input": 3, "target": "T"}'], 1, '"input" must be a string, not int'),
    (['{"input": "Q"}'], 1, 'missing "target"'),
    ([MC, '{"input": "Q", "choices": ["a", "b", "c"], "gold": 4}'], 2, '"gold" is 4 but there are 3 choices'),
    (['{"input": "Q", "choices": ["a", "b"], "gold": -1}'], 1, '"gold" is -1 but there are 2 choices'),
    (['{"input": "Q", "choices": ["a", "b"], "gold": true}'], 1, '"gold" must be an integer index, not true'),
    (['{"input": "Q", "choices": ["a", "b"]}'], 1, 'missing "gold" (the index of the right choice)'),
    (['{"input": "Q", "choices": ["a"], "gold": 0}'], 1, '"choices" must be a list of two or more non-empty strings'),
    (['{"input": "Q", "choices": ["a", "a"], "gold": 0}'], 1, '"choices" repeat a choice'),
    (['{"input": "Q", "target": "T", "gold": 0}'], 1,
     'unexpected "gold" in a generation example (keys: id, input, target)'),
    ([MC, MC, GEN], 3, "a generation example, but line 1 is multiple_choice; a file holds one kind"),
    (['{"input": "Q", "target": "T", "id": "a"}', '{"input": "R", "target": "U", "id": "a"}'], 2,
     "\"id\" 'a' repeats line 1"),
    ([GEN, '{"task": {"name": "late"}}'], 2, 'unexpected "task" in a generation example (keys: id, input, target)'),
    (['{"task": {"name": "x", "kind": "y"}}', GEN], 1,
     'a header is {"task": {"name": ..., "metrics": [...]}} and nothing else'),
    (['{"task": {"metrics": ["bleu"]}}', MC], 1,
     "metrics ['bleu'] are not for multiple_choice tasks (choose from ['accuracy'])"),
])
def test_malformed_lines_name_file_and_line(tmp_path, lines, line, message):
    path = tmp_path / "x.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as caught:
        read_task(path)
    assert str(caught.value) == f"{path}:{line}: {message}"


@pytest.mark.parametrize("content, message", [
    ("", "no examples (one JSON object per line; see megallm.evaluation.tasks)"),
    ('{"task": {"name": "only"}}\n\n', "no examples (one JSON object per line; see megallm.evaluation.tasks)"),
    (None, "task file does not exist"),
])
def test_files_without_examples(tmp_path, content, message):
    path = tmp_path / "x.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match="^" + str(path) + ": ") as caught:
        read_task(path)
    assert str(caught.value) == f"{path}: {message}"


def test_few_shot_prompt_joins_answered_demos_and_the_open_query():
    mc = Example("Fortune: Eat.\nCategory:", choices=("food", "law"), gold=0)
    gen = Example("English: Open file\nGerman:", target="Datei öffnen")
    query = Example("English: Close file\nGerman:", target="Datei schließen")
    assert answer_of(mc) == "food" and answer_of(gen) == "Datei öffnen"
    assert format_example(gen, None) == gen.input
    assert format_example(gen, "x") == gen.input + continuation("x") == "English: Open file\nGerman: x"
    assert few_shot_prompt([mc, gen], query) == ("Fortune: Eat.\nCategory: food\n\n"
                                                 "English: Open file\nGerman: Datei öffnen\n\n"
                                                 "English: Close file\nGerman:")
    assert few_shot_prompt([], query) == query.input
    with pytest.raises(ValueError):
        answer_of(Example("no answer"))


def test_fixture_lines_are_plain_json_objects():
    """The classification fixtures are {"text", "label"} lines, four labels."""
    lines = (FIXTURES / "fortunes_classification" / "train.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert all(set(r) == {"text", "label"} for r in rows)
    assert {r["label"] for r in rows} == {"computers", "food", "law", "science"}
    assert Path(FIXTURES / "README.md").is_file()
