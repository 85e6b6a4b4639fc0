"""The context a model was trained at (megallm.inference.context) and tools/generate.py's warning past it:
the evaluation tests' tiny model (tests/evaluation/trained.py: train.seq_len 64, exported), its export
with a longer declared context as a published Llama's config.json has, and that folder imported."""

from __future__ import annotations

import json
import shutil

import pytest
from tokenizers import Tokenizer

from megallm.cli.convert_ckpt import main as convert
from megallm.cli.generate import main as generate
from megallm.inference.context import trained_context
from megallm.parallel.distributed import select_deepspeed_accelerator
from tests.evaluation.trained import SEQ_LEN, trained_model
from tests.helpers import run_main

pytestmark = pytest.mark.slow  # the evaluation tests' trained model (TP=2 run and export), when first built

PROMPT = "import os\n\ndef main(path):\n    return os.path.join(path, 'config')\n"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    select_deepspeed_accelerator()
    return trained_model(tmp_path_factory)


def test_trained_context_of_checkpoints_and_folders(trained, tmp_path):
    run = trained.checkpoint.parent.parent
    assert trained_context(run) == trained_context(trained.checkpoint)
    assert trained_context(run).tokens == SEQ_LEN
    assert trained_context(run).source == f"train.seq_len of {trained.checkpoint}"
    assert trained_context(trained.hf).tokens == SEQ_LEN  # the export writes what the run trained at
    assert trained_context(trained.hf).source == f"max_position_embeddings in {trained.hf / 'config.json'}"

    published = tmp_path / "published"  # a Hugging Face model whose publisher trained it at 4096 tokens
    shutil.copytree(trained.hf, published)
    config = json.loads((published / "config.json").read_text())
    (published / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 4096}))
    assert trained_context(published).tokens == 4096
    assert convert(["import", str(published), str(tmp_path / "imported"), "--weights-only"]) == 0
    imported = trained_context(tmp_path / "imported")  # step 0, no train.seq_len: the original's context
    assert imported.tokens == 4096 and "max_position_embeddings of the Hugging Face model" in imported.source


def test_generate_warns_past_the_trained_context(trained, capsys):
    tokenizer = Tokenizer.from_file(str(trained.hf / "tokenizer.json"))
    prompt_tokens = 1 + len(tokenizer.encode(PROMPT, add_special_tokens=False).ids)  # the start token, then its own
    assert prompt_tokens + 8 < SEQ_LEN < prompt_tokens + 40
    within = run_main(generate, [trained.hf, "--prompt", PROMPT, "--prompt", "def", "--max-new-tokens", 8], capsys)
    assert within.returncode == 0, within.stderr
    assert "warning" not in within.stderr

    beyond = run_main(generate, [trained.hf, "--prompt", PROMPT, "--prompt", "def", "--max-new-tokens", 40,
                                 "--no-stop"], capsys)
    assert beyond.returncode == 0, beyond.stderr
    (line,) = [line for line in beyond.stderr.splitlines() if "warning" in line]
    assert line == (f"generate: warning: 1 of 2 prompts with --max-new-tokens 40 run past the {SEQ_LEN} tokens "
                    f"{trained.hf} was trained at (max_position_embeddings in {trained.hf / 'config.json'}) (up to "
                    f"{prompt_tokens + 40} tokens): positions beyond it were never trained, and what the model "
                    "generates there is extrapolation")
    assert beyond.stdout.count("### prompt") == 2  # generated all the same
