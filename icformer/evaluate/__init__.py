"""`python -m icformer evaluate`: the paper's measurements (docs/paper.md) for one compressor.

Sections (each resumable, in this order), one module each, each a few plain functions returning rows:

* ``qa`` (``qa.py``): held-out question answering for the full context, ICAE, IC-Former and (when its
  checkpoint exists) IC-Former without pre-training, plus two floors, ``none`` (the question alone)
  and ``<method>-swapped`` (a method's vectors of another context of the same task).
* ``reconstruction`` (``reconstruction.py``): autoencoding quality against context length.
* ``randomness`` (``randomness.py``): the same at one length for normal, reversed, patterned and random text.
* ``bench`` (``speed.py``): compression speed and FLOPs from ``icformer.bench``.

Every run also recomputes the attention analysis (``attention.py``). The rest: ``settings.py``
(`EvalSettings`; its fields are the flags), ``methods.py`` (what is evaluated), ``windows.py`` (token
windows of the validation text), ``decoding.py`` (batched greedy decoding), ``store.py`` (the
resumable sample store), ``summary.py`` (means, intervals, ours beside the paper's), ``paper.py``
(the paper's numbers), ``report.py`` with ``report_template.md`` (the README), ``workspace.py``
(what the tasks share) and ``runner.py`` (one run); its command line is ``icformer/cli/evaluate.py``.
What the files hold: ``icformer.results``. A new task is a module beside ``qa.py`` with an
``open_*``/``run_*`` pair and a summary, called from ``runner.py``.
"""

from ..results import (ATTENTION_COLUMNS, FILES, NO_PRETRAIN, PVO_COLUMNS, QA_COLUMNS, QA_SCORES, RAND_COLUMNS,
                       RANDOMNESS_KINDS, REC_COLUMNS, TABLE_COLUMNS, above_floor, write_table)
from .attention import ATTENTION_WINDOWS, attention_rows
from .decoding import FirstLine, encode_timed, generate_batch
from .methods import (Method, Variant, build_methods, build_variants, default_no_pretrain_dir, default_results_dir,
                      load_no_pretrain)
from .paper import LLAMA2_7B, PAPER_NUMBERS, paper_speed_rows
from .qa import qa_scores, select_questions, summarise_qa
from .randomness import allowed_ids, randomness_ids
from .reconstruction import reconstruction_ce, summarise_reconstruction
from .report import markdown_table, qa_findings, render_readme
from .runner import run_evaluation
from .settings import SECTIONS, EvalSettings
from .speed import flops_numbers
from .store import SampleStore
from .summary import paper_vs_ours
from .windows import TextSource

__all__ = [
    "ATTENTION_COLUMNS", "ATTENTION_WINDOWS", "FILES", "LLAMA2_7B", "NO_PRETRAIN", "PAPER_NUMBERS", "PVO_COLUMNS",
    "QA_COLUMNS", "QA_SCORES", "RANDOMNESS_KINDS", "RAND_COLUMNS", "REC_COLUMNS", "SECTIONS", "TABLE_COLUMNS",
    "EvalSettings", "FirstLine", "Method", "SampleStore", "TextSource", "Variant", "above_floor",
    "allowed_ids", "attention_rows", "build_methods", "build_variants", "default_no_pretrain_dir",
    "default_results_dir", "encode_timed", "flops_numbers", "generate_batch", "load_no_pretrain", "markdown_table",
    "paper_speed_rows", "paper_vs_ours", "qa_findings", "qa_scores", "randomness_ids", "reconstruction_ce",
    "render_readme", "run_evaluation", "select_questions", "summarise_qa", "summarise_reconstruction",
    "write_table",
]
