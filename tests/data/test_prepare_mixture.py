"""tools/prepare_data.py --source NAME=GLOB: several corpora with one tokenizer trained on a weighted sample
of all of them (or given), each a normal corpus, loading together as a mixture; the one-line refusals."""

from __future__ import annotations

import contextlib
import glob
import io
import sysconfig
from pathlib import Path

import pytest

from megallm.cli.prepare_data import main
from megallm.config.schema import SourceConfig
from megallm.data.mixture import open_mixture
from megallm.data.plan import plan_units
from megallm.data.prepare import prepare, training_texts
from megallm.data.prepare_mixture import SourceSpec, TokenizerSample, prepare_mixture
from megallm.data.shards import Manifest
from megallm.data.tokenizer import load_tokenizer, train_bpe
from tests.helpers import run_main, run_tool, tiny_tokenizer

STDLIB = sysconfig.get_paths()["stdlib"]
# Two real packages as two domains: HTTP code and logging code (" record" is frequent in logging, absent in http).
PATTERNS = {"web": f"{STDLIB}/http/*.py", "logs": f"{STDLIB}/logging/*.py"}
TRAIN_CHARS = 160_000  # each package holds more: the sample's shares are the weights' exactly
COMMON = ["--vocab-size", 512, "--tokenizer-train-bytes", TRAIN_CHARS, "--shard-tokens", 50_000, "--workers", 1]


def files(name: str) -> list[Path]:
    return sorted(Path(p) for p in glob.glob(PATTERNS[name]))


def text(name: str) -> str:
    return "".join(p.read_text() for p in files(name))


def plans() -> dict:
    return {name: plan_units(files(name), 16 << 20, "text") for name in PATTERNS}


MIXTURE_ARGS = ["--source", f"web={PATTERNS['web']}", "--source", f"logs={PATTERNS['logs']}",
                "--source-weight", "web=1", "--source-weight", "logs=3", *COMMON]


@pytest.fixture(scope="module")
def mixture(tmp_path_factory):
    """The sources prepared by the command line's main, logs weighing 3 times web: the folder and what it printed."""
    out = tmp_path_factory.mktemp("mixture") / "mix"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main([str(a) for a in [*MIXTURE_ARGS, "--output", out]]) == 0
    return out, printed.getvalue().splitlines()


def corpus_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.mark.slow
def test_the_command_line_writes_the_same_corpora(mixture, tmp_path):
    out, lines = mixture
    result = run_tool("prepare_data", *MIXTURE_ARGS, "--output", tmp_path / "mix")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == lines[-1].replace(str(out), str(tmp_path / "mix"))
    for name in PATTERNS:
        assert corpus_files(tmp_path / "mix" / name) == corpus_files(out / name)


def test_every_source_is_a_corpus_with_the_same_tokenizer_and_they_train_together(mixture):
    out, lines = mixture
    assert sorted(p.name for p in out.iterdir()) == ["logs", "web"]
    tokenizers = {name: (out / name / "tokenizer.json").read_bytes() for name in PATTERNS}
    assert tokenizers["web"] == tokenizers["logs"]
    manifests = {name: Manifest.load(out / name) for name in PATTERNS}
    assert manifests["web"].tokenizer_sha256 == manifests["logs"].tokenizer_sha256
    assert all(m.vocab_size == 512 and m.splits["train"] and m.splits["val"] for m in manifests.values())
    # Progress as a single corpus prints it, the tokenizer's sample split 1:3, and the overrides last.
    assert "the tokenizer's sample: web 39 KiB (25%), logs 117 KiB (75%)" in lines
    assert lines.count(f"wrote {out / 'web' / 'manifest.json'}") == 1
    assert lines[-1] == (f"+data.sources.web.path={out / 'web'} +data.sources.web.weight=1 "
                         f"+data.sources.logs.path={out / 'logs'} +data.sources.logs.weight=3")
    # The printed overrides, as the config reads them, open as one mixture (no refusal of two tokenizers).
    settings: dict[str, dict] = {}
    for override in lines[-1].split():
        key, value = override.removeprefix("+data.sources.").split("=")
        name, setting = key.split(".")
        settings.setdefault(name, {})[setting] = float(value) if setting == "weight" else value
    opened = open_mixture("", {name: SourceConfig(**s) for name, s in settings.items()}, None, ("train", "val"))
    assert opened.names == ["web", "logs"] and [s.weight for s in opened.sources] == [1.0, 3.0]
    assert [s.corpus.manifest.tokens("train") for s in opened.sources] == \
        [manifests[name].tokens("train") for name in ("web", "logs")]


def test_the_tokenizer_saw_every_source(mixture):
    out, _ = mixture
    mixed = load_tokenizer(out / "logs" / "tokenizer.json")
    web_only = train_bpe(training_texts(plans()["web"], "text", TRAIN_CHARS), 512)
    web, logs = text("web"), text("logs")
    assert " record" not in web and logs.count(" record") > 100
    assert len(mixed.encode(" record").ids) == 1 and len(web_only.encode(" record").ids) > 1
    # The logs are shorter in the mixture's tokens than in those of a tokenizer trained on the web source alone
    # (and the web source a little longer: it had a quarter of the sample).
    assert len(mixed.encode(logs).ids) < 0.95 * len(web_only.encode(logs).ids)
    assert len(mixed.encode(web).ids) > len(web_only.encode(web).ids)


def test_the_weights_split_the_tokenizers_sample():
    for weights, budgets in (({"web": 1, "logs": 3}, [40_000, 120_000]), ({"web": 3, "logs": 1}, [120_000, 40_000]),
                             ({"web": 0.5, "logs": 0.5}, [80_000, 80_000])):
        sample = TokenizerSample.of(plans(), weights, TRAIN_CHARS)
        assert list(sample.budgets.values()) == budgets
        assert sum(len(piece) for piece in sample.texts("text")) == TRAIN_CHARS
        assert sample.read == sample.budgets  # each source gave its share: a prefix of its documents
    # A source with less text than its share gives all it has; the rest of the budget is not moved to the others.
    sample = TokenizerSample.of(plans(), {"web": 1, "logs": 1}, 1_000_000)
    list(sample.texts("text"))
    assert sample.read == {"web": len(text("web")), "logs": len(text("logs"))}


def test_another_weighting_trains_another_tokenizer(mixture, tmp_path, capsys):
    out, _ = mixture
    assert run_main(main, ["--source", f"web={PATTERNS['web']}", "--source", f"logs={PATTERNS['logs']}",
                           "--source-weight", "web=3", "--source-weight", "logs=1", "--output", tmp_path / "mix",
                           "--tokenizer-only", *COMMON], capsys).returncode == 0
    assert sorted(p.name for p in (tmp_path / "mix").iterdir()) == ["tokenizer.json"]
    swapped = load_tokenizer(tmp_path / "mix" / "tokenizer.json")
    assert swapped.to_str() != load_tokenizer(out / "web" / "tokenizer.json").to_str()
    assert len(swapped.encode(text("web")).ids) < len(load_tokenizer(out / "web" / "tokenizer.json")
                                                      .encode(text("web")).ids)
    # --tokenizer-only with the fixture's weights writes the very tokenizer its sources got.
    assert run_main(main, ["--source", f"web={PATTERNS['web']}", "--source", f"logs={PATTERNS['logs']}",
                           "--source-weight", "web=1", "--source-weight", "logs=3", "--output", tmp_path / "same",
                           "--tokenizer-only", *COMMON], capsys).returncode == 0
    assert (tmp_path / "same" / "tokenizer.json").read_bytes() == (out / "web" / "tokenizer.json").read_bytes()


def test_a_given_tokenizer_makes_the_corpora_single_prepares_would(tmp_path):
    given = tmp_path / "given" / "tokenizer.json"
    given.parent.mkdir()
    tiny_tokenizer(given)
    options = dict(tokenizer_path=given, shard_tokens=50_000, workers=1)
    manifests = prepare_mixture([SourceSpec("web", PATTERNS["web"]), SourceSpec("logs", PATTERNS["logs"])],
                                tmp_path / "mix", log=lambda *_: None, **options)
    assert list(manifests) == ["web", "logs"]
    prepare(files("logs"), tmp_path / "alone", log=lambda *_: None, **options)
    for name in ("web", "logs"):
        assert (tmp_path / "mix" / name / "tokenizer.json").read_bytes() == given.read_bytes()
    assert corpus_files(tmp_path / "mix" / "logs") == corpus_files(tmp_path / "alone")


@pytest.mark.parametrize("argv, phrases", [
    (["--source", "web=A", "--source", "web=B"], ["--source web is given twice"]),
    (["--source", "2web=A"], ["the name '2web' must be letters, digits and _", "data.sources.2web"]),
    (["--source", "my-web=A"], ["the name 'my-web'"]),
    (["--source", "web"], ["--source 'web' must be NAME=GLOB"]),
    (["--source", "web={web}", "--source", "logs={tmp}/nothing/*.txt"],
     ["--source logs '", "nothing/*.txt' matches no file"]),
    (["--source", "web={web}", "--input", "{web}"], ["--source and --input (or --python-stdlib) exclude each other"]),
    (["--source", "web={web}", "--python-stdlib"], ["exclude each other"]),
    (["--source", "web={web}", "--source-weight", "web=0"], ["--source-weight 'web=0': a weight must be a number > 0"]),
    (["--source", "web={web}", "--source-weight", "web=-1"], ["a weight must be a number > 0"]),
    (["--source", "web={web}", "--source-weight", "web=nan"], ["a weight must be a number > 0"]),
    (["--source", "web={web}", "--source-weight", "web=x"], ["a weight must be a number > 0"]),
    (["--source", "web={web}", "--source-weight", "wbe=1"], ["--source-weight 'wbe=1' names no source", "web"]),
    (["--source", "web={web}", "--source", "logs={logs}", "--source-weight", "web=1"],
     ["weighs web but not logs", "weigh every source or none"]),
    (["--source-weight", "web=1", "--input", "{web}"], ["--source-weight weighs a source"]),
    (["--source", "web={web}", "--part", "0/2"], ["--part and --merge prepare one corpus", "--tokenizer-only"]),
])
def test_bad_sources_are_one_line_errors_that_write_nothing(argv, phrases, tmp_path, capsys):
    argv = [a.format(web=PATTERNS["web"], logs=PATTERNS["logs"], tmp=tmp_path) for a in argv]
    result = run_main(main, [*argv, "--output", tmp_path / "out", *COMMON], capsys)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prepare_data: error: "), lines
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    assert not (tmp_path / "out").exists()
