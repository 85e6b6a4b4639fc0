"""Opening a prepared corpus for a run: manifest, shard presence, tokenizer and vocabulary checks.

`data.path` is a local folder or a URL WebDataset can open (`https://host/corpus`,
`gs://bucket/corpus`, `pipe:CMD`): files are found by appending `/<name>`, or by
replacing `{name}` where the location contains it (`pipe:aws s3 cp s3://b/c/{name} -`).
All checks here are cheap reads done before any process group starts, so a wrong
`data.path` or tokenizer fails in seconds with a one-line error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from megallm.data.shards import MANIFEST, Manifest
from megallm.data.tokenizer import load_tokenizer, read_exact_text, tokenizer_hash
from megallm.errors import DataError
from megallm.files import TOKENIZER_FILE


def is_url(location: str) -> bool:
    return len(urlparse(location).scheme) > 1  # "C:" is a drive, not a scheme


@dataclass
class Corpus:
    location: str  # folder or URL
    manifest: Manifest

    def url(self, name: str) -> str:
        """Where the corpus file `name` (a shard, the tokenizer) is read from."""
        if "{name}" in self.location:
            return self.location.replace("{name}", name)
        if is_url(self.location):
            return self.location.rstrip("/") + "/" + name
        return str(Path(self.location) / name)

    def tokenizer_files(self) -> dict[str, str]:
        """{name: text} of the corpus's tokenizer file and its side files (from the folder or the URL),
        as checkpoints keep them: written back, each gives its bytes again."""
        names = [self.manifest.tokenizer_file, *self.manifest.tokenizer_side_files]
        if is_url(self.location):
            texts = [read_remote(self.location, name).decode() for name in names]
        else:
            texts = [read_exact_text(self.url(name)) for name in names]
        return dict(zip([TOKENIZER_FILE, *self.manifest.tokenizer_side_files], texts))


def read_remote(location: str, name: str) -> bytes:
    """The corpus file `name` from a URL location, through WebDataset's opener."""
    from webdataset.gopen import gopen  # deferred: webdataset imports torch (~5 s); local corpora need neither

    url = Corpus(location, None).url(name)  # type: ignore[arg-type]  # no manifest yet: only its url() is used
    try:
        with gopen(url, "rb") as src:
            return src.read()
    except Exception as exc:  # any transport: curl, gsutil, a pipe's command
        raise DataError(f"cannot read {url} ({type(exc).__name__}: {exc}); check data.path") from exc


def open_corpus(path: str, tokenizer: str | None, splits: tuple[str, ...]) -> Corpus:
    if is_url(path):  # remote: read the manifest once, shards stream later
        manifest = Manifest.parse(read_remote(path, MANIFEST).decode(), where=f"{path} {MANIFEST}")
    else:
        manifest = Manifest.load(path)
    corpus = Corpus(path, manifest)
    for split in splits:
        shards = manifest.splits.get(split) or []
        if not shards:
            raise DataError(f"corpus {path} has no {split!r} shards (it has {sorted(manifest.splits)}); "
                            "re-run tools/prepare_data.py or fix data.train_split / data.val_split")
        if not is_url(path):
            missing = [s.path for s in shards if not Path(corpus.url(s.path)).is_file()]
            if missing:
                raise DataError(f"corpus {path} lacks {len(missing)} shard(s) its manifest lists, e.g. "
                                f"{missing[0]}; re-run tools/prepare_data.py")
    if tokenizer:
        tok = load_tokenizer(tokenizer)
        if tokenizer_hash(tok) != manifest.tokenizer_sha256 or tok.get_vocab_size() != manifest.vocab_size:
            raise DataError(
                f"tokenizer {tokenizer} (vocab {tok.get_vocab_size()}, sha256 {tokenizer_hash(tok)[:12]}) does not "
                f"match corpus {path} (vocab {manifest.vocab_size}, sha256 {manifest.tokenizer_sha256[:12]}); "
                f"use {corpus.url(manifest.tokenizer_file)} or prepare the corpus with --tokenizer {tokenizer}"
            )
    return corpus
