"""lm-evaluation-harness's `megallm` model on a sharded (TP=2) checkpoint against lm-eval's own `hf`
model on that checkpoint's export: the same accuracies, per-sample log-likelihoods, rolling
log-likelihoods and greedy generations, on local tasks (tests/fixtures/lm_eval: `dataset_path: json`
over local JSON lines; nothing is downloaded).

`hf` is given add_bos_token=True for the multiple-choice and generation tasks, so that its tokenizer
puts the document start token in front of each context as megallm does; rolling log-likelihoods
already begin from that token in both, so `hf` runs with its defaults there.
"""

from __future__ import annotations

import sys

import pytest

from tests.helpers import REPO

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("accelerate")  # lm-eval's `hf` model imports it (lm-eval[hf])

TASKS = REPO / "tests" / "fixtures" / "lm_eval"


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No hub: datasets and the hub offline, the local JSON task files read from the repository root."""
    import datasets

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    monkeypatch.chdir(REPO)


def evaluate(model: str, model_args: str, tasks: list[str]) -> dict:
    from lm_eval.tasks import TaskManager

    import megallm.evaluation.harness  # noqa: F401 (registers "megallm")

    manager = TaskManager(include_path=str(TASKS), include_defaults=False)
    return lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=tasks, task_manager=manager,
                                   batch_size=4, device="cpu", log_samples=True, bootstrap_iters=0)


def responses(out: dict, task: str) -> list:
    return [s["filtered_resps"] for s in sorted(out["samples"][task], key=lambda s: s["doc_id"])]


def test_registered_beside_lm_evals_own_models():
    from lm_eval.api.registry import get_model

    from megallm.evaluation.harness import MegallmLM

    assert get_model("megallm") is MegallmLM
    assert get_model("dummy").__name__ == "DummyLM"  # lm-eval's own models stay registered


@pytest.mark.slow
def test_sharded_checkpoint_scores_as_hf_on_its_export(trained, world_of_one, offline, capsys):
    ours = evaluate("megallm", f"path={trained.checkpoint},dtype=fp32",
                    ["megallm_tiny_mc", "megallm_tiny_gen", "megallm_tiny_text"])
    theirs = evaluate("hf", f"pretrained={trained.hf},dtype=float32,add_bos_token=True",
                      ["megallm_tiny_mc", "megallm_tiny_gen"])
    rolling = evaluate("hf", f"pretrained={trained.hf},dtype=float32", ["megallm_tiny_text"])

    for metric in ("acc,none", "acc_norm,none"):
        assert ours["results"]["megallm_tiny_mc"][metric] == theirs["results"]["megallm_tiny_mc"][metric]
    mc_ours, mc_theirs = responses(ours, "megallm_tiny_mc"), responses(theirs, "megallm_tiny_mc")
    assert len(mc_ours) == 8 and all(len(r) == 4 for r in mc_ours)
    differences = [abs(a[0] - b[0]) for ra, rb in zip(mc_ours, mc_theirs) for a, b in zip(ra, rb)]
    assert max(differences) < 1e-4
    assert [[a[1] for a in r] for r in mc_ours] == [[b[1] for b in r] for r in mc_theirs]  # greedy flags

    assert responses(ours, "megallm_tiny_gen") == responses(theirs, "megallm_tiny_gen")
    assert any(r[0] for r in responses(ours, "megallm_tiny_gen"))  # something was generated

    text_ours, text_theirs = responses(ours, "megallm_tiny_text"), responses(rolling, "megallm_tiny_text")
    assert len(text_ours) == 3
    for a, b in zip(text_ours, text_theirs):
        assert a[0] == pytest.approx(b[0], rel=1e-5, abs=1e-4)
    for metric in ("byte_perplexity,none", "bits_per_byte,none"):
        assert ours["results"]["megallm_tiny_text"][metric] == pytest.approx(
            rolling["results"]["megallm_tiny_text"][metric], rel=1e-5)
    print(f"megallm vs hf: acc {ours['results']['megallm_tiny_mc']['acc,none']:.3f} both, "
          f"max |loglikelihood diff| {max(differences):.2e}", file=sys.stderr)


def test_model_args_are_checked(tmp_path):
    from megallm.errors import UsageError
    from megallm.evaluation.harness import MegallmLM

    with pytest.raises(UsageError, match="model_args needs path="):
        MegallmLM()
    # lm-eval's CLI always adds batch_size and device (default cuda:0): model_args win, no CUDA is not forced
    lm_eval_cli = {"batch_size": 1, "max_batch_size": None, "device": "cuda:0"}
    with pytest.raises(UsageError, match="does not exist"):
        MegallmLM.create_from_arg_string(f"path={tmp_path / 'none'},dtype=fp32,batch_size=8", lm_eval_cli)
