"""Real evaluation data from this machine's own files (nothing downloaded), and the dataset folder built from it:
the harvesting behind tools/make_eval_data.py.

Sources (each returns dicts in a deterministic order; "id" says where a record came from):
- fortunes: Debian's `fortunes` package (/usr/share/games/fortunes, BSD licence of
  fortune-mod): {"text", "label": the file's name (art, computers, food, ...), "id"};
  top-level files only, so an offensive/ or off/ folder is never read;
- gettext_pairs: the installed message catalogs (/usr/share/locale/<language>/LC_MESSAGES/*.mo,
  each under its package's licence): {"input": English msgid, "target": translation, "id",
  "catalog"}; single sentences only (no plural, context or format strings);
- dpkg_descriptions: the installed packages' descriptions (/var/lib/dpkg/status, each under its
  package's licence): {"input": long description, "target": short description, "id": package};
- python_docstrings: the Python standard library's source (PSF License), parsed with ast:
  {"input": "def name(signature):", "target": the docstring's first paragraph, "id", "owner"}.

`write_datasets(out, ...)` turns them into (layout in docs/evaluation/DATA.md):
    classification/fortunes/{train,validation,test}.jsonl    {"text", "label"} lines, for fine-tuning
    tasks/fortune_category/{split}.jsonl                       multiple choice: the category of a fortune
    tasks/translation_en_<language>/{split}.jsonl             generation: a UI message, translated
    tasks/package_summary/{split}.jsonl                        generation: a package's one-line summary
    tasks/docstring/{split}.jsonl                              generation: a function's docstring summary
    README.md, LICENSES.md, manifest.json                      counts, sources and their licences
Splits are 80/10/10 of a seeded permutation (per class for fortunes); task files are in
megallm.evaluation.tasks' format, with a header naming the task.
"""

from __future__ import annotations

import ast
import json
import re
import struct
import sysconfig
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from megallm.errors import DataError
from megallm.evaluation.tasks import Example, write_task
from megallm.files import writing_folder

FORTUNES = Path("/usr/share/games/fortunes")
LOCALES = Path("/usr/share/locale")
DPKG_STATUS = Path("/var/lib/dpkg/status")
DPKG_INFO = Path("/var/lib/dpkg/info")
DOCS = Path("/usr/share/doc")
# Topical categories with plain-word names, 74 (medicine) to 1,050 (computers) fortunes each in fortunes 1:1.99.1.
FORTUNE_CATEGORIES = ("art", "computers", "education", "food", "law", "love", "medicine", "politics", "science",
                      "sports")
# Catalogs of names (ISO countries, languages, currencies; keyboard layouts), not sentences.
EXCLUDED_CATALOGS = re.compile(r"^(iso_|iso-|xkeyboard-config)")
NOT_PROSE = re.compile(r"[%{}<>$\\_|=@\t\n]")  # format directives, markup, mnemonics, identifiers
DOCSTRING_SKIP = {"test", "tests", "idlelib", "lib2to3", "turtledemo", "ensurepip", "pydoc_data", "site-packages",
                  "dist-packages", "__pycache__"}
LANGUAGES = {"de": "German", "fr": "French", "es": "Spanish", "it": "Italian", "pt": "Portuguese", "nl": "Dutch",
             "pl": "Polish", "ru": "Russian", "sv": "Swedish", "cs": "Czech", "ja": "Japanese", "zh_CN": "Chinese"}
SPLITS = ("train", "validation", "test")
HELD_OUT_FRACTION = 0.1  # each of validation and test
FORTUNES_LICENSE = ("BSD (fortune-mod, The Regents of the University of California; the Debian packaging's notes "
                    "in /usr/share/doc/fortunes/copyright)")
PYTHON_LICENSE = "PSF License Version 2 (Python Software Foundation License)"


class MissingSourceError(DataError):
    """A source that is not on this machine (a package not installed)."""


# ---- fortunes ------------------------------------------------------------------------------------
def fortunes(folder: Path = FORTUNES, categories: Optional[Sequence[str]] = None, max_chars: int = 500) -> list[dict]:
    """Each fortune of the category files in `folder` (all, or `categories`) of at most `max_chars`
    characters; a text found in two categories is left out, as its label is ambiguous."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingSourceError(f"fortunes: {folder} does not exist; install it with `apt-get install fortunes`")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.is_symlink() and "." not in p.name)
    if categories is not None:
        missing = sorted(set(categories) - {p.name for p in files})
        if missing:
            raise DataError(f"fortunes: no category file {', '.join(missing)} in {folder} "
                            f"(there: {', '.join(p.name for p in files)})")
        files = [p for p in files if p.name in categories]
    records = [{"text": text, "label": p.name, "id": f"{p.name}#{i}"}
               for p in files for i, text in enumerate(read_fortune_file(p)) if len(text) <= max_chars]
    labels_of: dict[str, set] = {}
    for r in records:
        labels_of.setdefault(r["text"], set()).add(r["label"])
    seen = set()
    kept = []
    for r in records:
        if len(labels_of[r["text"]]) == 1 and r["text"] not in seen:
            seen.add(r["text"])
            kept.append(r)
    return kept


def read_fortune_file(path: Path) -> list[str]:
    """The fortunes of one strfile source file: texts between lines of "%", overstrikes removed."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    while "\x08" in text:  # overstrikes on a teletype: "_\bA" (an underlined A), "___\b\b\bTHE"
        text, removed = re.subn(r"[^\x08\n]\x08", "", text)
        if not removed:
            text = text.replace("\x08", "")
    text = re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", "", text)  # bells and the like; tabs and newlines stay
    return [t.strip("\n").rstrip() for t in re.split(r"^%$", text, flags=re.M) if t.strip()]


# ---- gettext catalogs ----------------------------------------------------------------------------
def gettext_pairs(locale_root: Path = LOCALES, language: str = "de", max_chars: int = 120) -> list[dict]:
    """English messages and their translations from every installed catalog of `language`:
    sentences of 3+ words starting with a capital, translated to something else, each msgid once
    (the first catalog in name order wins). Catalogs of names (EXCLUDED_CATALOGS) are skipped."""
    folder = Path(locale_root) / language / "LC_MESSAGES"
    catalogs = sorted(p for p in folder.glob("*.mo") if not EXCLUDED_CATALOGS.match(p.name))
    if not catalogs:
        raise MissingSourceError(f"gettext: no message catalogs in {folder}; is language {language!r} installed?")
    pairs, seen = [], set()
    for path in catalogs:
        for i, (msgid, msgstr) in enumerate(sorted(read_mo(path))):
            msgid, msgstr = msgid.strip(), msgstr.strip()
            if msgid in seen or not _is_sentence(msgid, max_chars) or not msgstr or msgstr == msgid \
                    or "\n" in msgstr:
                continue
            seen.add(msgid)
            pairs.append({"input": msgid, "target": msgstr, "id": f"{path.stem}#{i}", "catalog": str(path)})
    return pairs


def _is_sentence(text: str, max_chars: int) -> bool:
    return (len(text) <= max_chars and len(text.split()) >= 3 and text[0].isupper() and text[0].isascii()
            and not NOT_PROSE.search(text))


def read_mo(path: Path) -> list[tuple[str, str]]:
    """The singular, context-free (msgid, msgstr) pairs of a GNU .mo catalog, in its charset; the
    header (msgid "") and entries that do not decode are left out. Format: the GNU gettext manual,
    "The Format of GNU MO Files" (stdlib gettext.GNUTranslations refuses some installed catalogs)."""
    data = Path(path).read_bytes()
    order = {b"\xde\x12\x04\x95": "<", b"\x95\x04\x12\xde": ">"}.get(data[:4])
    if order is None or len(data) < 20:
        raise DataError(f"{path}: not a GNU .mo catalog")
    count, ids_at, strs_at = struct.unpack(order + "3I", data[8:20])
    entries = []
    for i in range(count):
        id_len, id_at = struct.unpack(order + "2I", data[ids_at + 8 * i:ids_at + 8 * i + 8])
        str_len, str_at = struct.unpack(order + "2I", data[strs_at + 8 * i:strs_at + 8 * i + 8])
        entries.append((data[id_at:id_at + id_len], data[str_at:str_at + str_len]))
    header = dict(entries).get(b"", b"").decode("ascii", "replace")
    charset = re.search(r"charset=([\w.-]+)", header)
    return list(_decoded(entries, charset.group(1) if charset else "utf-8"))


def _decoded(entries: list[tuple[bytes, bytes]], charset: str) -> Iterator[tuple[str, str]]:
    for msgid, msgstr in entries:
        if not msgid or b"\x00" in msgid or b"\x04" in msgid:  # header, plural forms, context
            continue
        try:
            yield msgid.decode(charset), msgstr.decode(charset)
        except (UnicodeDecodeError, LookupError):
            continue


# ---- dpkg descriptions ---------------------------------------------------------------------------
def dpkg_descriptions(status: Path = DPKG_STATUS, max_chars: int = 1000) -> list[dict]:
    """Each installed package's long description (paragraphs joined by newlines, at most
    `max_chars`) and its one-line summary, by package name; a long description shared by
    several packages (a library and its -dev) is kept for the first one only."""
    status = Path(status)
    if not status.is_file():
        raise MissingSourceError(f"dpkg: {status} does not exist (not a Debian-based system?)")
    records, seen_texts, seen_packages = [], set(), set()
    paragraphs = sorted(deb822_paragraphs(status.read_text(encoding="utf-8", errors="replace")),
                        key=lambda p: p.get("Package", ""))
    for fields in paragraphs:
        if not fields.get("Status", "").endswith(" installed") or "Description" not in fields:
            continue
        short, _, long_lines = fields["Description"].partition("\n")
        long = long_description(long_lines)
        if not long or len(long) > max_chars or long in seen_texts or fields["Package"] in seen_packages:
            continue
        seen_texts.add(long)
        seen_packages.add(fields["Package"])
        records.append({"input": long, "target": short.strip(), "id": fields["Package"],
                        "package": fields["Package"]})
    return records


def deb822_paragraphs(text: str) -> Iterator[dict[str, str]]:
    """Debian control paragraphs as {field: value}; continuation lines keep their newline and indentation."""
    for block in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields:
            yield fields


def long_description(lines: str) -> str:
    """A Description's continuation lines as text: each paragraph (" ." separates them) on one line."""
    paragraphs, current = [], []
    for line in lines.splitlines():
        if line.strip() == ".":
            paragraphs.append(" ".join(current))
            current = []
        elif line.strip():
            current.append(line.strip())
    paragraphs.append(" ".join(current))
    return "\n".join(p for p in paragraphs if p)


# ---- Python docstrings ---------------------------------------------------------------------------
def python_docstrings(root: Optional[Path] = None, packages: Optional[Sequence[str]] = None,
                      max_chars: int = 160) -> list[dict]:
    """Public functions and methods of the standard library at `root` (this Python's by default;
    tests, idlelib and the like skipped, or only `packages`) and the first paragraph of their
    docstrings, on one line, of 10 to `max_chars` characters; signature-style docstrings skipped."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise MissingSourceError(f"docstrings: {root} does not exist; pass the standard library's folder")
    records, seen = [], set()
    for path in sorted(root.rglob("*.py")):
        module = _module_name(path.relative_to(root))
        if module is None or (packages is not None and module.split(".")[0] not in packages):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue  # a file for another Python version, or a deliberately broken one
        for record in _functions(tree.body, module, max_chars):
            if record["id"] not in seen:
                seen.add(record["id"])
                records.append(record)
    return records


def _module_name(relative: Path) -> Optional[str]:
    parts = relative.with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    if not parts or any(p in DOCSTRING_SKIP or p.startswith(("_", "test")) or "-" in p for p in parts):
        return None
    return ".".join(parts)


def _functions(body: list, owner: str, max_chars: int) -> Iterator[dict]:
    for node in body:
        if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            yield from _functions(node.body, f"{owner}.{node.name}", max_chars)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
            summary = _summary(ast.get_docstring(node) or "")
            if 10 <= len(summary) <= max_chars and "->" not in summary and not summary.startswith(
                    ("(", node.name + "(")):
                prefix = "async def" if isinstance(node, ast.AsyncFunctionDef) else "def"
                yield {"input": f"{prefix} {node.name}({ast.unparse(node.args)}):", "target": summary,
                       "id": f"{owner}.{node.name}", "owner": owner}


def _summary(docstring: str) -> str:
    return " ".join(docstring.strip().split("\n\n")[0].split())


# ---- licences ------------------------------------------------------------------------------------
def owning_packages(paths: Sequence[Path], info: Path = DPKG_INFO) -> dict[str, str]:
    """{path: the installed package that owns it} from dpkg's file lists, for those found."""
    wanted, owners = {str(p) for p in paths}, {}
    for listing in sorted(Path(info).glob("*.list")):
        package = listing.stem.split(":")[0]
        for line in listing.read_text(encoding="utf-8", errors="replace").splitlines():
            if line in wanted:
                owners.setdefault(line, package)
    return owners


def package_license(package: str, docs: Path = DOCS) -> str:
    """The licences a package's machine-readable copyright file names ("Files: *" first), else a pointer to it."""
    path = Path(docs) / package / "copyright"
    if not path.is_file():
        return f"unknown (no {path})"
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("Format:"):
        return f"see {path}"
    names = []
    for fields in deb822_paragraphs(text):
        if "Files" in fields and "License" in fields:
            name = fields["License"].split("\n")[0].strip()
            if fields["Files"].split()[0] == "*":
                names.insert(0, name)
            elif name not in names:
                names.append(name)
    unique = list(dict.fromkeys(names))
    return ", ".join(unique) + f" ({path})" if unique else f"see {path}"


# ---- the dataset folder --------------------------------------------------------------------------
@dataclass(frozen=True)
class Locations:
    """Where write_datasets reads each source (this machine's standard places by default)."""

    fortunes: Path = FORTUNES
    locales: Path = LOCALES
    dpkg_status: Path = DPKG_STATUS
    stdlib: Optional[Path] = None                    # this Python's standard library
    stdlib_packages: Optional[tuple[str, ...]] = None  # all of it
    dpkg_info: Path = DPKG_INFO
    docs: Path = DOCS


@dataclass(frozen=True)
class _Build:
    folder: Path
    manifest: dict
    where: Locations
    language: str
    fortune_categories: tuple[str, ...]


def split(records: Sequence[dict], seed: int, limit: Optional[int] = None,
          by: Optional[str] = None) -> dict[str, list[dict]]:
    """SPLITS of a seeded permutation of `records` (its first `limit`), each in the permutation's
    order: validation and test HELD_OUT_FRACTION each (rounded; at least one of 3 or more records),
    the rest train; stratified by the field `by` if given (a group of 1 or 2 goes to train)."""
    chosen = [records[i] for i in np.random.default_rng(seed).permutation(len(records))[:limit]]
    keys = [r[by] if by else "" for r in chosen]
    assigned = [""] * len(chosen)
    for group in sorted(set(keys)):
        positions = [i for i, key in enumerate(keys) if key == group]
        held = max(1, round(len(positions) * HELD_OUT_FRACTION)) if len(positions) >= 3 else 0
        for rank, position in enumerate(positions):
            assigned[position] = "validation" if rank < held else "test" if rank < 2 * held else "train"
    return {part: [r for r, a in zip(chosen, assigned) if a == part] for part in SPLITS}


def one_block(text: str) -> str:
    """`text` without blank lines (which separate demonstrations in a few-shot prompt)."""
    return re.sub(r"\n\s*\n+", "\n", text.strip())


def fortune_example(record: dict, categories: Sequence[str]) -> Example:
    return Example(f"Fortune: {one_block(record['text'])}\nCategory:", choices=tuple(categories),
                   gold=list(categories).index(record["label"]), id=record["id"])


def translation_example(record: dict, language: str) -> Example:
    return Example(f"English: {record['input']}\n{LANGUAGES.get(language, language)}:", target=record["target"],
                   id=record["id"])


def summary_example(record: dict) -> Example:
    return Example(f"Package description: {one_block(record['input'])}\nSummary:", target=record["target"],
                   id=record["id"])


def docstring_example(record: dict) -> Example:
    return Example(f"In {record['owner']}:\n{record['input']}\nDocstring:", target=record["target"], id=record["id"])


def write_datasets(out: Path, language: str = "de", max_per_source: Optional[int] = None, seed: int = 0,
                   skip_missing: bool = False, fortune_categories: Sequence[str] = FORTUNE_CATEGORIES,
                   where: Locations = Locations(), log: Callable[[str], None] = print) -> dict:
    """Build every dataset into the new folder `out` (published whole when done) and return its
    manifest: {"files": {path: examples}, "classes": {split: {label: count}}, "skipped": {source: why}, ...}.
    A source missing from this machine raises MissingSourceError, or is skipped if `skip_missing`."""
    out = Path(out)
    if out.exists():
        raise DataError(f"{out} already exists; remove it or choose another folder")
    manifest = {"language": language, "max_per_source": max_per_source, "seed": seed, "files": {}, "classes": {},
                "skipped": {}}
    sections = []
    with writing_folder(out) as folder:
        build = _Build(folder, manifest, where, language, tuple(fortune_categories))
        for source, write in [("fortunes", _write_fortunes), ("gettext", _write_translations),
                              ("dpkg", _write_summaries), ("docstrings", _write_docstrings)]:
            try:
                sections.append(write(build))
            except MissingSourceError as exc:
                if not skip_missing:
                    raise
                manifest["skipped"][source] = str(exc)
                log(f"skipped {source}: {exc}")
        for path, count in manifest["files"].items():
            log(f"{path}: {count} examples")
        (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        (folder / "LICENSES.md").write_text(_licenses_text(sections, manifest))
        (folder / "README.md").write_text(_readme_text(manifest))
    return manifest


def _write_split_tasks(build: _Build, name: str, parts: dict[str, list[dict]],
                       to_example: Callable[[dict], Example], metrics: Optional[Sequence[str]] = None) -> None:
    if not all(parts.values()):
        total = sum(map(len, parts.values()))
        raise DataError(f"{name}: {total} examples are too few to split into {', '.join(SPLITS)}")
    for part, records in parts.items():
        path = build.folder / "tasks" / name / f"{part}.jsonl"
        write_task(path, [to_example(r) for r in records], name, metrics)
        build.manifest["files"][str(path.relative_to(build.folder))] = len(records)


def _write_fortunes(build: _Build) -> str:
    records = fortunes(build.where.fortunes, build.fortune_categories)
    parts = split(records, build.manifest["seed"], build.manifest["max_per_source"], by="label")
    labels = sorted({r["label"] for r in records})
    for part, members in parts.items():
        path = build.folder / "classification" / "fortunes" / f"{part}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps({"text": r["text"], "label": r["label"]}, ensure_ascii=False) + "\n"
                                for r in members), encoding="utf-8")
        build.manifest["files"][str(path.relative_to(build.folder))] = len(members)
        build.manifest["classes"][part] = dict(sorted(Counter(r["label"] for r in members).items()))
    _write_split_tasks(build, "fortune_category", parts, lambda r: fortune_example(r, labels))
    files = [build.where.fortunes / label for label in labels]
    owners = sorted(set(owning_packages(files, build.where.dpkg_info).values())) or ["fortunes"]
    return (f"## fortunes: classification/fortunes, tasks/fortune_category\n\n"
            f"Fortune cookies of the categories {', '.join(labels)} from {build.where.fortunes} (Debian "
            f"package {', '.join(owners)}). Licence: {FORTUNES_LICENSE}.\n")


def _write_translations(build: _Build) -> str:
    records = gettext_pairs(build.where.locales, build.language)
    parts = split(records, build.manifest["seed"], build.manifest["max_per_source"])
    name = f"translation_en_{build.language}"
    _write_split_tasks(build, name, parts, lambda r: translation_example(r, build.language), ["bleu"])
    used = sorted({r["catalog"] for part in parts.values() for r in part})
    owners = owning_packages([Path(c) for c in used], build.where.dpkg_info)
    rows = [f"| {Path(c).name} | {owners.get(c, 'unknown')} | "
            f"{package_license(owners[c], build.where.docs) if c in owners else ''} |" for c in used]
    return (f"## gettext catalogs: tasks/{name}\n\nEnglish messages and their translations from the installed "
            f"catalogs {build.where.locales}/{build.language}/LC_MESSAGES/*.mo. Each catalog belongs to a Debian "
            "package and is under that package's licence:\n\n| catalog | package | licence |\n| --- | --- | --- |\n"
            + "\n".join(rows) + "\n")


def _write_summaries(build: _Build) -> str:
    records = dpkg_descriptions(build.where.dpkg_status)
    parts = split(records, build.manifest["seed"], build.manifest["max_per_source"])
    _write_split_tasks(build, "package_summary", parts, summary_example)
    packages = sorted(r["package"] for part in parts.values() for r in part)
    rows = [f"| {p} | {package_license(p, build.where.docs)} |" for p in packages]
    return (f"## dpkg descriptions: tasks/package_summary\n\nThe descriptions of the installed packages in "
            f"{build.where.dpkg_status} (Debian), each written by the package's maintainers and under the "
            "package's licence:\n\n| package | licence |\n| --- | --- |\n" + "\n".join(rows) + "\n")


def _write_docstrings(build: _Build) -> str:
    root = Path(build.where.stdlib or sysconfig.get_paths()["stdlib"])
    records = python_docstrings(root, build.where.stdlib_packages)
    parts = split(records, build.manifest["seed"], build.manifest["max_per_source"])
    _write_split_tasks(build, "docstring", parts, docstring_example)
    return (f"## Python docstrings: tasks/docstring\n\nFunction signatures and docstring summaries of the Python "
            f"standard library at {root}. Licence: {PYTHON_LICENSE} ({root / 'LICENSE.txt'}).\n")


def _licenses_text(sections: list[str], manifest: dict) -> str:
    skipped = "".join(f"\nSkipped: {source}: {why}\n" for source, why in manifest["skipped"].items())
    return ("# Sources and licences\n\nEvery file here was taken from this machine's installed files "
            "(tools/eval_sources.py); nothing was downloaded.\n\n" + "\n".join(sections) + skipped)


def _readme_text(manifest: dict) -> str:
    files = "\n".join(f"| {path} | {count} |" for path, count in manifest["files"].items())
    classes = "\n".join(f"- {part}: " + ", ".join(f"{label} {n}" for label, n in counts.items())
                        for part, counts in manifest["classes"].items())
    skipped = "".join(f"\nSkipped: {source}: {why}\n" for source, why in manifest["skipped"].items())
    return ("# Evaluation data\n\nBuilt by `tools/make_eval_data.py` (tools/eval_sources.py) with language "
            f"{manifest['language']!r}, max_per_source {manifest['max_per_source']}, seed {manifest['seed']}. "
            "Task files are in megallm.evaluation.tasks' format (a header line, then one example per line); "
            'classification files hold {"text", "label"} lines. Sources and licences: LICENSES.md; what each '
            "dataset is: docs/evaluation/DATA.md in megallm.\n\n"
            f"| file | examples |\n| --- | --- |\n{files}\n\nFortune classes per split:\n\n"
            f"{classes or '(none)'}\n{skipped}")
