"""Evaluation data from the machine's files: tools/make_eval_data.py and tools/eval_sources.py beside it
(on sys.path through this folder's conftest, as for the script itself)."""

from __future__ import annotations

import gettext
import inspect
import json
import shutil
import struct
import subprocess
import sys
import sysconfig
from collections import Counter
from pathlib import Path

import eval_sources as sources
import pytest
from eval_sources import (
    Locations,
    MissingSourceError,
    dpkg_descriptions,
    fortunes,
    gettext_pairs,
    python_docstrings,
    read_mo,
    split,
    write_datasets,
)
from make_eval_data import main as make_eval_data

from megallm.errors import DataError
from megallm.evaluation.tasks import read_task
from tests.helpers import REPO

FIXTURES = REPO / "tests" / "fixtures" / "eval"
REAL_MO = Path("/usr/share/locale/de/LC_MESSAGES/sed.mo")
STDLIB = Path(sysconfig.get_paths()["stdlib"])
CATEGORIES = ("computers", "food", "law", "science")


def write_mo(path: Path, messages: dict[str, str], charset: str = "UTF-8") -> Path:
    """A GNU .mo catalog (little-endian, no hash table) of `messages` and a header naming `charset`."""
    entries = {"": f"Content-Type: text/plain; charset={charset}\n", **messages}
    keys = sorted(entries)
    ids = [k.encode(charset) for k in keys]
    strs = [entries[k].encode(charset) for k in keys]
    n, ids_at = len(keys), 28
    strs_at = ids_at + 8 * n
    data_at = strs_at + 8 * n
    table, blob = [], b""
    for text in ids + strs:
        table.append((len(text), data_at + len(blob)))
        blob += text + b"\0"
    header = struct.pack("<7I", 0x950412DE, 0, n, ids_at, strs_at, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + b"".join(struct.pack("<2I", *entry) for entry in table) + blob)
    return path


MESSAGES = {
    "The file was saved": "Die Datei wurde gespeichert",
    "Cannot open %s": "Kann %s nicht öffnen",          # a format string
    "file\0files": "Datei\0Dateien",                    # plural forms
    "menu\x04Open the file": "Datei öffnen",            # a context
    "OK": "OK",                                         # too short
    "Show hidden files": "Show hidden files",           # untranslated
    "_Open the file": "_Datei öffnen",                  # a mnemonic
    "Could not read the directory": "Verzeichnis konnte nicht gelesen werden",
}


# ---- fortunes ------------------------------------------------------------------------------------
def test_fortunes_reads_each_category_file():
    records = fortunes(FIXTURES / "fortunes")
    assert {r["label"] for r in records} == set(CATEGORIES)
    for r in records:
        assert r["text"] in (FIXTURES / "fortunes" / r["label"]).read_text() and len(r["text"]) <= 500
        assert "%" not in r["text"].splitlines() and r["id"].startswith(r["label"] + "#")
    food = [r["text"] for r in records if r["label"] == "food"]
    assert food[0] == ("A couple of kids tried using pickles instead of paddles for a Ping-Pong\n"
                       "game.  They had the volley of the Dills.").join(["\t", ""])
    assert len(fortunes(FIXTURES / "fortunes", max_chars=10_000)) == 24  # six fortunes per file
    assert {r["label"] for r in fortunes(FIXTURES / "fortunes", categories=["law"])} == {"law"}


def test_fortunes_skips_subfolders_symlinks_and_overstrikes(tmp_path):
    shutil.copytree(FIXTURES / "fortunes", tmp_path / "fortunes")
    for folder in ("off", "offensive"):
        (tmp_path / "fortunes" / folder).mkdir()
        (tmp_path / "fortunes" / folder / "food").write_text("never read\n%\n")
    (tmp_path / "fortunes" / "food.u8").symlink_to("food")
    (tmp_path / "fortunes" / "food.dat").write_bytes(b"\0\0\0\2")
    (tmp_path / "fortunes" / "art").write_text("_\bB_\bo_\bl_\bd words\n%\nThe ___\b\b\bEND\a\n%\nShared text\n%\n")
    (tmp_path / "fortunes" / "kids").write_text("Shared text\n%\n")
    records = fortunes(tmp_path / "fortunes")
    texts = [r["text"] for r in records]
    assert "Bold words" in texts and "The END" in texts and "never read" not in texts
    assert "Shared text" not in texts  # in two categories: its label is ambiguous
    assert len(records) == len(fortunes(FIXTURES / "fortunes")) + 2


def test_missing_fortunes_name_the_package(tmp_path):
    with pytest.raises(MissingSourceError, match=r"apt-get install fortunes"):
        fortunes(tmp_path / "none")
    with pytest.raises(DataError, match="no category file art in .* \\(there: computers, food, law, science\\)"):
        fortunes(FIXTURES / "fortunes", categories=["art", "food"])


# ---- gettext -------------------------------------------------------------------------------------
def test_gettext_pairs_keeps_translated_sentences_only(tmp_path):
    write_mo(tmp_path / "de" / "LC_MESSAGES" / "demo.mo", MESSAGES)
    write_mo(tmp_path / "de" / "LC_MESSAGES" / "iso_3166-1.mo", {"Federal Republic of Germany": "Deutschland"})
    pairs = gettext_pairs(tmp_path, "de")
    assert [(p["input"], p["target"]) for p in pairs] == [
        ("Could not read the directory", "Verzeichnis konnte nicht gelesen werden"),
        ("The file was saved", "Die Datei wurde gespeichert")]
    assert pairs[0]["catalog"] == str(tmp_path / "de" / "LC_MESSAGES" / "demo.mo")
    # the test's catalogs read the same with the standard library's gettext
    translation = gettext.translation("demo", localedir=tmp_path, languages=["de"])
    assert all(translation.gettext(p["input"]) == p["target"] for p in pairs)


def test_read_mo_decodes_the_catalogs_charset(tmp_path):
    path = write_mo(tmp_path / "latin.mo", {"Could not read the file": "Datei konnte nicht gelesen werden (ä)"},
                    charset="ISO-8859-1")
    assert read_mo(path) == [("Could not read the file", "Datei konnte nicht gelesen werden (ä)")]
    (tmp_path / "bad.mo").write_bytes(b"not a catalog at all")
    with pytest.raises(DataError, match="not a GNU .mo catalog"):
        read_mo(tmp_path / "bad.mo")
    with pytest.raises(MissingSourceError, match="no message catalogs"):
        gettext_pairs(tmp_path, "xx")


@pytest.mark.skipif(not REAL_MO.is_file(), reason=f"{REAL_MO} is not installed (Debian's sed ships it)")
def test_a_real_catalog_reads_as_gettext_does(tmp_path):
    shutil.copy(REAL_MO, tmp_path / "sed.mo")
    translation = gettext.GNUTranslations(open(tmp_path / "sed.mo", "rb"))
    entries = read_mo(tmp_path / "sed.mo")
    assert len(entries) > 50 and all(translation.gettext(msgid) == msgstr for msgid, msgstr in entries)
    (tmp_path / "de" / "LC_MESSAGES").mkdir(parents=True)
    shutil.copy(REAL_MO, tmp_path / "de" / "LC_MESSAGES" / "sed.mo")
    pairs = gettext_pairs(tmp_path, "de")
    assert pairs and all(translation.gettext(p["input"]) == p["target"] != p["input"] for p in pairs)


# ---- dpkg ----------------------------------------------------------------------------------------
def test_dpkg_descriptions_from_a_status_excerpt(tmp_path):
    records = {r["package"]: r for r in dpkg_descriptions(FIXTURES / "dpkg_status")}
    # libsqlite3-0 and sqlite3 share their long description: the first package by name keeps it
    assert sorted(records) == ["bash", "grep", "libsqlite3-0", "python3-pip", "sed"]
    assert records["sed"]["target"] == "GNU stream editor for filtering/transforming text"
    assert records["sed"]["input"].startswith("sed reads the specified files or the standard input if no files")
    assert "\n" not in records["sed"]["input"]  # one paragraph, one line
    assert len(records["bash"]["input"].splitlines()) == 3  # three paragraphs (" ." between them)
    not_installed = (FIXTURES / "dpkg_status").read_text().replace("Status: install ok installed",
                                                                      "Status: deinstall ok config-files")
    (tmp_path / "status").write_text(not_installed)
    assert dpkg_descriptions(tmp_path / "status") == []


# ---- docstrings ----------------------------------------------------------------------------------
def test_python_docstrings_of_the_json_package(tmp_path):
    import json.decoder

    shutil.copytree(STDLIB / "json", tmp_path / "json")
    (tmp_path / "json" / "tests").mkdir()
    (tmp_path / "json" / "tests" / "test_x.py").write_text('def test_it():\n    """Never read."""\n')
    records = {r["id"]: r for r in python_docstrings(tmp_path)}
    decode = records["json.decoder.JSONDecoder.decode"]
    assert decode["input"] == "def decode(self, s, _w=WHITESPACE.match):"
    expected = " ".join(inspect.getdoc(json.decoder.JSONDecoder.decode).split("\n\n")[0].split())
    assert decode["target"] == expected and decode["owner"] == "json.decoder.JSONDecoder"
    assert "json.loads" in records and not any("test" in key or "._" in key for key in records)
    assert python_docstrings(tmp_path, packages=["email"]) == []


# ---- the dataset folder --------------------------------------------------------------------------
def fixture_locations(tmp_path: Path) -> Locations:
    write_mo(tmp_path / "locale" / "de" / "LC_MESSAGES" / "demo.mo",
             {f"Could not read file number {i}": f"Datei Nummer {i} konnte nicht gelesen werden" for i in range(30)})
    shutil.copytree(STDLIB / "json", tmp_path / "stdlib" / "json")
    return Locations(fortunes=FIXTURES / "fortunes", locales=tmp_path / "locale",
                     dpkg_status=FIXTURES / "dpkg_status", stdlib=tmp_path / "stdlib")


def test_write_datasets_builds_readable_deterministic_files(tmp_path):
    where = fixture_locations(tmp_path)
    manifest = write_datasets(tmp_path / "a", where=where, fortune_categories=CATEGORIES, log=lambda _: None)
    for path, count in manifest["files"].items():
        full = tmp_path / "a" / path
        if path.startswith("tasks/"):
            task = read_task(full)
            assert len(task.examples) == count and task.name == full.parent.name
        else:
            rows = [json.loads(line) for line in full.read_text().splitlines()]
            assert len(rows) == count and all(set(r) == {"text", "label"} for r in rows)
    assert manifest["files"]["tasks/translation_en_de/train.jsonl"] == 24
    per_class = Counter(r["label"] for r in fortunes(FIXTURES / "fortunes"))
    assert manifest["classes"]["train"] == {label: n - 2 for label, n in per_class.items()}  # one each held out
    assert manifest["classes"]["test"] == dict.fromkeys(CATEGORIES, 1)
    assert read_task(tmp_path / "a" / "tasks" / "translation_en_de" / "test.jsonl").metrics == ("bleu",)
    assert {"LICENSES.md", "README.md", "manifest.json"} <= {p.name for p in (tmp_path / "a").iterdir()}
    assert "PSF License" in (tmp_path / "a" / "LICENSES.md").read_text()
    write_datasets(tmp_path / "b", where=where, fortune_categories=CATEGORIES, log=lambda _: None)
    for path in manifest["files"]:
        assert (tmp_path / "a" / path).read_bytes() == (tmp_path / "b" / path).read_bytes(), path
    with pytest.raises(DataError, match="already exists"):
        write_datasets(tmp_path / "a", where=where)


def test_a_missing_source_stops_or_is_skipped(tmp_path):
    where = Locations(fortunes=tmp_path / "none", locales=tmp_path / "none", dpkg_status=FIXTURES / "dpkg_status",
                      stdlib=tmp_path / "none")
    with pytest.raises(MissingSourceError, match="apt-get install fortunes"):
        write_datasets(tmp_path / "out", where=where, log=lambda _: None)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
    manifest = write_datasets(tmp_path / "out", where=where, skip_missing=True, log=lambda _: None)
    assert sorted(manifest["skipped"]) == ["docstrings", "fortunes", "gettext"]
    assert "Skipped: fortunes" in (tmp_path / "out" / "README.md").read_text()


def test_split_is_seeded_and_stratified():
    records = [{"id": i, "label": "ab"[i % 2]} for i in range(40)]
    parts = split(records, seed=3, by="label")
    assert [len(parts[s]) for s in sources.SPLITS] == [32, 4, 4]
    assert all(sum(r["label"] == "a" for r in parts[s]) == len(parts[s]) // 2 for s in sources.SPLITS)
    assert parts == split(records, seed=3, by="label") and parts != split(records, seed=4, by="label")
    assert sum(len(p) for p in split(records, seed=3, limit=20).values()) == 20


def test_make_eval_data_reports_one_line(tmp_path, capsys):
    assert make_eval_data([str(FIXTURES)]) == 2
    assert capsys.readouterr().err == f"make_eval_data: error: {FIXTURES} already exists; remove it or choose " \
                                      "another folder\n"
    assert make_eval_data([str(tmp_path / "out"), "--max-per-source", "5"]) == 2
    assert capsys.readouterr().err.startswith("make_eval_data: error: --max-per-source must be >= 10")


def test_the_script_finds_its_module_beside_it(tmp_path):
    """`python tools/make_eval_data.py` as the README runs it, from another folder: eval_sources imports from
    the script's own folder, and a mistake is one line."""
    run = subprocess.run([sys.executable, str(REPO / "tools" / "make_eval_data.py"), str(tmp_path / "out"),
                          "--max-per-source", "5"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert (run.returncode, run.stdout) == (2, "")
    assert run.stderr == "make_eval_data: error: --max-per-source must be >= 10 (each split takes a tenth)\n"
