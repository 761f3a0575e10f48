"""Alignment statistics of the pretraining corpus against the KGs, as stage=kgbert computes them.

    python scripts/alignment_report.py                      # $CORPUS_DIR + FewCLUE vs every *.spo in $KG_DIR
    python scripts/alignment_report.py --kg ../shared/kg/Medical.spo

Prints kg/aligned_pairs, coverage, triples per sentence and the time, per KG and for all KGs
together, and (with medical_ner in the corpus) how many KG mentions are gold entity spans there.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from datamodules.pretraining.alignment import AlignmentRules, align
from datamodules.pretraining.corpus import CorpusSource, read_corpus
from datamodules.pretraining.kg import KgSource, load_kg


def gold_spans(path: Path) -> tuple[list[str], list[set[tuple[int, int]]]]:
    """Texts and BIO entity spans of a medical_ner TSV (characters separated by spaces)."""
    texts, spans = [], []
    for line in path.read_text(encoding="utf-8").split("\n")[1:]:
        if not line.strip():
            continue
        chars, tags = (part.split(" ") for part in line.split("\t"))
        found, start = set(), None
        for i, tag in enumerate([*tags, "O"]):
            if start is not None and not tag.startswith("I-"):
                found.add((start, i))
                start = None
            if tag.startswith("B-"):
                start = i
        texts.append("".join(chars))
        spans.append(found)
    return texts, spans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", nargs="*", default=[os.environ.get("CORPUS_DIR", "../shared/corpus")])
    parser.add_argument("--kg", nargs="*", default=[os.environ.get("KG_DIR", "../shared/kg")])
    parser.add_argument("--fewclue", default=os.environ.get("FEWCLUE_DIR", "../shared/fewclue"))
    args = parser.parse_args()

    started = time.perf_counter()
    sentences, sources = read_corpus(CorpusSource(files=args.corpus, fewclue_dir=args.fewclue), ".cache")
    print(f"corpus: {len(sentences)} sentences, {sum(map(len, sentences))} characters, "
          f"{len(sources)} sources, read in {time.perf_counter() - started:.1f}s")
    rules = AlignmentRules()
    paths = KgSource(files=args.kg).paths()
    report = {}
    for name, files in [*((p.name, [str(p)]) for p in paths), ("all", [str(p) for p in paths])]:
        kg, given = load_kg(KgSource(files=files))
        _, stats = align(sentences, kg, rules, given)
        report[name] = stats
        print(name, json.dumps(stats, ensure_ascii=False))
    for folder in args.corpus:
        ner = Path(folder) / "medical_ner" / "dev.tsv"
        medical = [p for p in paths if p.name == "Medical.spo"]
        if ner.is_file() and medical:
            texts, gold = gold_spans(ner)
            kg, _ = load_kg(KgSource(files=[str(medical[0])]))
            aligned, _ = align(texts, kg, rules)
            found = [(i, s, e) for i, a in enumerate(aligned) for s, e, _ in a.mentions]
            hits = sum((s, e) in gold[i] for i, s, e in found)
            total = sum(map(len, gold))
            print(f"medical_ner/dev.tsv vs Medical.spo: {len(found)} KG mentions, {hits} are gold entity spans "
                  f"(precision {hits / len(found):.3f}, recall {hits / total:.3f} of {total} gold spans)")


if __name__ == "__main__":
    main()
