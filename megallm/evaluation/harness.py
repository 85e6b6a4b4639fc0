"""megallm models in EleutherAI's lm-evaluation-harness: the model type `megallm`.

Importing this module registers `MegallmLM` under the name `megallm` (lm-eval 0.4 finds models
by registry only, not by entry points), so either:

    python -m megallm.evaluation.harness --model megallm \\
        --model_args path=runs/tiny/checkpoints,dtype=fp32,batch_size=8 --tasks hellaswag
    # the arguments of `lm_eval` (`lm_eval run ...`): this registers the model, then runs lm-eval's CLI;
    # a plain `lm_eval --model megallm` cannot find the model (lm-eval loads no plugins)

or, in Python:

    import lm_eval, megallm.evaluation.harness  # noqa: F401 (registers "megallm")
    lm_eval.simple_evaluate(model="megallm", model_args="path=hf/tiny", tasks=["arc_easy"])

model_args: path (a megallm checkpoint of any layout, a run or checkpoints folder, or a Hugging
Face Llama folder; required), dtype (fp32, bf16), batch_size, device (auto: cuda when there; cpu, cuda),
tokenizer (a tokenizer.json), start (document: every input begins with the tokenizer's document
start token, as megallm trains and as `hf` feeds with add_bos_token=True; tokenizer: what the
tokenizer adds itself, as `hf` by default; none), max_length (default and most: the context the
model was trained at, megallm.inference.context). Local tasks: `--include_path DIR`
with YAMLs whose `dataset_path: json` reads local files (tests/fixtures/lm_eval/); set
HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 to make sure nothing is downloaded.

All scoring is megallm.evaluation.model.EvalModel's, which tokenizes as lm-eval's causal models
do; loglikelihood_rolling scores each text's tokens given the document start token (`hf` does the
same without add_bos_token; with it, `hf` also scores a start token it put in front of the text).
No request ends the run. Where lm-eval's split leaves a continuation no token (a token spanning the
context / continuation boundary, such as 'def main(' + '):' tokenized 'def', ' main', '():'), its
`hf` model stops every task on an assertion or, served from its logits cache, scores the
continuation 0 (probability 1); and it asserts on a continuation longer than max_length. EvalModel
scores both (the context loses its last token to the continuation; windows) and says so on stderr
in one line, `megallm: ...`.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from typing import Optional

from megallm.extras import MissingExtraError, require

try:  # before lm-eval is imported: without the harness extra, one line with the pip command
    require("harness", "megallm.evaluation.harness")
except MissingExtraError as missing_extra:
    if __name__ != "__main__":
        raise
    print(f"harness: error: {missing_extra}", file=sys.stderr)
    sys.exit(missing_extra.exit_code)

import lm_eval.models  # noqa: E402, F401 (lm-eval registers its own models only into an empty registry: first)
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.model import LM  # noqa: E402
from lm_eval.api.registry import model_registry  # noqa: E402

from megallm.errors import MegallmError, UsageError
from megallm.evaluation.model import EvalModel

MAX_GEN_TOKS = 256  # lm-eval's default for `hf`


class MegallmLM(LM):
    """lm-eval's LM interface over an EvalModel (see the module docstring for model_args)."""

    def __init__(self, path: Optional[str] = None, dtype: str = "fp32", batch_size: int | str = 8,
                 device: Optional[str] = "auto", tokenizer: Optional[str] = None, start: str = "document",
                 max_length: Optional[int] = None, model: Optional[EvalModel] = None, **unused):
        super().__init__()
        if model is None:
            if not path:
                raise UsageError("model_args needs path=CHECKPOINT_OR_HF_FOLDER")
            size = 8 if str(batch_size).startswith("auto") else int(batch_size)  # no probing: the user sets it
            model = EvalModel.load(path, device=device or "auto", dtype=dtype, tokenizer=tokenizer, batch_size=size,
                                   start=start, max_length=int(max_length) if max_length else None,
                                   log=lambda line: print(f"megallm: {line}", file=sys.stderr))
        self.model = model

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: Optional[dict] = None) -> MegallmLM:
        from lm_eval.utils import simple_parse_args_string  # deferred: lm-eval's utils, only for its model_args

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: Optional[dict] = None) -> MegallmLM:
        """model_args win over lm-eval's own options (its CLI always passes --batch_size, default 1, and
        --device, default cuda:0: taken only where CUDA is there, else the default, auto)."""
        import torch  # deferred: only to see whether lm-eval's default device exists

        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in arg_dict}
        if str(extra.get("device", "")).startswith("cuda") and not torch.cuda.is_available():
            del extra["device"]
        return cls(**arg_dict, **extra)

    @property
    def tokenizer_name(self) -> str:
        return str(self.model.tokenizer_file)

    def loglikelihood(self, requests: list[Instance], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        results = self.model.loglikelihood([req.args for req in requests])
        for req, result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", req.args, result)
        return results

    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
        results = self.model.loglikelihood_rolling([req.args[0] for req in requests])
        for req, result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, result)
        return results

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        """Greedy (or, with temperature > 0, sampled) completions, grouped by their generation settings."""
        groups: dict = defaultdict(list)
        for i, req in enumerate(requests):
            context, kwargs = req.args
            kwargs = dict(kwargs or {})
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.pop("max_gen_toks", MAX_GEN_TOKS))
            temperature = float(kwargs.pop("temperature", 0.0)) if kwargs.pop("do_sample", False) else 0.0
            groups[(tuple(until), max_new, temperature)].append((i, context))
        results: list = [None] * len(requests)
        for (until, max_new, temperature), items in groups.items():
            texts = self.model.generate([c for _, c in items], max_new, stop=until, temperature=temperature)
            for (i, _), text in zip(items, texts):
                results[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return results


# By its import path rather than @register_model: one entry whether this module was imported or
# runs as __main__ (python -m), where lm-eval would refuse a second class as another model.
if "megallm" not in model_registry:
    model_registry.register("megallm", target="megallm.evaluation.harness:MegallmLM")


def main(argv: Optional[list[str]] = None) -> int:
    """lm-eval's command line with `megallm` registered (`python -m megallm.evaluation.harness ...`);
    a problem with the model's arguments is one line `harness: error: ...`, exit code 2."""
    from lm_eval.__main__ import cli_evaluate  # deferred: only the command line needs lm-eval's CLI

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    try:
        cli_evaluate()
    except MegallmError as error:
        print(f"harness: error: {error}", file=sys.stderr)
        return error.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
