"""Evaluating language models: few-shot tasks, perplexity, lm-evaluation-harness, and the data they use.

Model-independent (no torch):
- tasks.py     task files (JSON lines: multiple choice or generation) -> Task, one-line DataErrors
- demos.py     choosing k demonstrations per query: random, BM25 (bm25s), embedding (cosine)
- prompts.py   the few-shot prompt format: answered demonstrations, blank lines, the open query
- metrics.py   BLEU (sacrebleu), ROUGE (rouge-score), accuracy and macro-F1 (scikit-learn)
               and lm-eval's standard errors beside them

The model side:
- model.py       EvalModel: one loaded model that scores, generates and embeds text
- fewshot.py     one task: demonstrations per query, prompts, answers scored
- masked.py      masked-token accuracy of an MLM encoder against the unigram baseline
- perplexity.py  perplexity and bits per byte on a held-out corpus split or files
- harness.py     megallm models inside EleutherAI's lm-evaluation-harness (model type `megallm`)
- report.py      results as JSON, a console table and W&B
- ladder.py      every checkpoint of runs against tokens and training FLOPs: CSV and the plot

During training (plugged in by launch/pretrain.py through build_trainer's extra_callbacks; the
core imports none of it):
- downstream.py        the `downstream` config section checked (no torch) and its callback built
- during_training.py   DownstreamEvaluator: few-shot tasks every N steps on the engine's own model

Entry point: tools/evaluate.py (megallm.cli.evaluate). The evaluation data is made by a tool outside
the library, tools/make_eval_data.py (its harvesting in tools/eval_sources.py); what the
datasets are: docs/evaluation/DATA.md.
"""
