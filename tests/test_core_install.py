"""A core install pretrains; each application without its extra says so in one line with the pip command.

The environment is a real virtual environment whose site-packages is this suite's own minus
every distribution of megallm's extras (megallm.extras.EXTRAS: scipy, matplotlib, scikit-learn,
sacrebleu, transformers, lm-eval, ...), entry by entry as symbolic links, so it is what
`pip install megallm` leaves (plus what the core's own dependencies bring) without a download.
In it, the quickstart's steps run as the README gives them: prepare a corpus, train `tiny` with
torchrun on 2 processes, export (no transformers: --no-verify) and generate; the applications
then refuse in one line each.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from importlib.metadata import distribution
from pathlib import Path

import pytest

from megallm.extras import EXTRAS
from tests.helpers import REPO, clean_environment, stdlib_subset

pytestmark = pytest.mark.slow


def extra_entries() -> set[str]:
    """The top-level site-packages entries (packages, modules, dist-info, .libs) of every extra's
    distributions that are installed here."""
    entries = set()
    for dist_name in {d for modules in EXTRAS.values() for d in modules.values()}:
        try:
            files = distribution(dist_name).files or []
        except Exception:  # not installed here (flash-attn, liger-kernel on a CPU machine)
            continue
        entries |= {f.parts[0] for f in files if not f.parts[0].startswith("..")}
    return entries


@pytest.fixture(scope="module")
def core_python(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("core") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    ours = Path(sysconfig.get_paths()["purelib"])
    theirs = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()"
                                  "['purelib'])"], check=True, capture_output=True, text=True).stdout.strip())
    left_out = extra_entries()
    assert {"scipy", "sklearn", "matplotlib", "sacrebleu", "transformers"} <= left_out
    for entry in ours.iterdir():
        if entry.name not in left_out and not (theirs / entry.name).exists():
            (theirs / entry.name).symlink_to(entry)
    return venv / "bin" / "python"


def run(python: Path, *args: str, cwd: Path = REPO, timeout: int = 600) -> subprocess.CompletedProcess:
    env = clean_environment()
    env["PATH"] = f"{python.parent}{os.pathsep}{env['PATH']}"
    return subprocess.run([str(python), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_core_install_pretrains_and_applications_name_their_extra(core_python, tmp_path):
    probe = run(core_python, "-c", "import importlib.util as u; print([m for m in ('scipy', 'sklearn', 'matplotlib', "
                "'sacrebleu', 'transformers', 'lm_eval', 'torch', 'deepspeed', 'megatron.core', 'megallm') "
                "if u.find_spec(m)])")
    assert probe.stdout.split() == ["['torch',", "'deepspeed',", "'megatron.core',", "'megallm']"], probe.stderr

    # The quickstart's steps (launch/quickstart.sh), on a smaller corpus and for 4 steps.
    inputs = [arg for path in stdlib_subset() for arg in ("--input", str(path))]
    prepared = run(core_python, "tools/prepare_data.py", *inputs, "--output", str(tmp_path / "data"),
                   "--vocab-size", "1024")
    assert prepared.returncode == 0, prepared.stderr
    trained = run(core_python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                  "launch/pretrain.py", "+model=tiny", f"run_dir={tmp_path / 'run'}", f"data.path={tmp_path / 'data'}",
                  "train.steps=4", "train.seq_len=256", "train.global_batch_tokens=4096", "train.micro_batch_size=8",
                  "optim.lr=2e-3", "optim.warmup_steps=2", "train.eval_every=4", "train.eval_batches=2",
                  "checkpoint.every=4", "logging.every=1")
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "step 4/4" in trained.stdout and "val_ppl" in trained.stdout
    assert (tmp_path / "run" / "checkpoints" / "step_00000004").is_dir()

    refused_export = run(core_python, "tools/convert_ckpt.py", "export", str(tmp_path / "run"), str(tmp_path / "hf"))
    assert (refused_export.returncode, refused_export.stderr) == (2, (
        "convert_ckpt: error: convert_ckpt export's logits check in transformers (--no-verify skips it) needs "
        "megallm's [hf] extra (transformers not installed): pip install 'megallm[hf]' (in a checkout: pip install "
        "-e '.[hf]')\n"))
    assert not (tmp_path / "hf").exists()
    exported = run(core_python, "tools/convert_ckpt.py", "export", str(tmp_path / "run"), str(tmp_path / "hf"),
                   "--no-verify")
    assert exported.returncode == 0, exported.stderr
    generated = run(core_python, "tools/generate.py", str(tmp_path / "hf"), "--prompt", "def main(",
                    "--max-new-tokens", "8")
    assert generated.returncode == 0 and "\ndef main(" in generated.stdout, generated.stderr

    # Each application, without its extra: one line with the pip command, before any work.
    for command, extra, missing in [
        (["tools/scaling_law.py", str(tmp_path / "run")], "scaling", "scipy, matplotlib, threadpoolctl"),
        (["tools/evaluate.py", str(tmp_path / "run"), "--perplexity", str(tmp_path / "data")], "eval",
         "sacrebleu, rouge-score, bm25s, scikit-learn, matplotlib"),
        (["launch/finetune.py", f"finetune.init={tmp_path / 'run'}"], "eval",
         "sacrebleu, rouge-score, bm25s, scikit-learn, matplotlib"),
        (["-m", "megallm.evaluation.harness", "--model", "megallm"], "harness", "lm-eval, accelerate"),
    ]:
        refused = run(core_python, *command, timeout=120)
        prog = {"scaling": "scaling_law", "harness": "harness"}.get(extra, "evaluate")
        if command[0] == "launch/finetune.py":
            prog = "finetune"
        needed_by = {"scaling_law": "tools/scaling_law.py", "evaluate": "tools/evaluate.py",
                     "finetune": "launch/finetune.py", "harness": "megallm.evaluation.harness"}[prog]
        assert (refused.returncode, refused.stdout, refused.stderr) == (2, "", (
            f"{prog}: error: {needed_by} needs megallm's [{extra}] extra ({missing} not installed): "
            f"pip install 'megallm[{extra}]' (in a checkout: pip install -e '.[{extra}]')\n")), command
