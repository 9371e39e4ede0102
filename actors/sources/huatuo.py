"""HuatuoGPT2 corpora (FreedomIntelligence): the GPT-4 SFT set and the pretraining
instructions. Both are ShareGPT (`{id, conversations: [{from: human|gpt, value}]}`), so
records go through `map_sharegpt`; what these adapters add is finding the right files.

* `huatuo_sft`: HuatuoGPT2-SFT-GPT4-140K. The repo is spelt `…SFT-GPT4-140K` but its
  file `HuatuoGPT2-GPT4-SFT-140K.json` (a JSON array); an older revision held
  `HuatuoGPT2_sft_instruct_GPT4.jsonl` (JSON lines). A folder may hold any of these
  names; exactly one is read (the first present, in that order), as they carry the same
  data.
* `huatuo_pretrain`: HuatuoGPT2-Pretraining-Instruction,
  `data/HuatuoGPT2_Pretrain_Meidcal_<Corpus>_<lang>.json` (upstream spells `Meidcal`;
  the corrected `Medical` is accepted too). In a folder, one file per configured corpus
  and language is read, in the order of `corpora`; a configured corpus without a file is
  one `ingest.missing_file` item. The corpus is the dialogue's `category`, and it prefixes
  the source key (`Books_cn:<id>`), so ids of two corpora never collide and do not
  depend on the file's spelling or on whether the path named the file or its folder.

A path that names a file is read as it is, whatever its name (the pretraining corpus is
then taken from the name when it follows the upstream pattern).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Literal

from pydantic import Field, field_validator

from actors.sources.common import (
    SourceFormat,
    SourceItem,
    SourceOptions,
    SourceRef,
    basename,
    failure,
    files_under,
    is_file,
)
from actors.sources.sharegpt import read_sharegpt_file

_SUFFIXES = (".json", ".jsonl")


def _by_name(path: str) -> dict[str, str]:
    """Files under a folder (recursively) by base name; the shallowest path wins a tie."""
    found: dict[str, str] = {}
    for file in sorted(files_under(path, _SUFFIXES), key=lambda p: (p.count("/"), p)):
        found.setdefault(basename(file), file)
    return found


# -- HuatuoGPT2-SFT-GPT4-140K -------------------------------------------------------------

SFT_FILE_NAMES = (
    "HuatuoGPT2-GPT4-SFT-140K.json",  # the file as published
    "HuatuoGPT2-SFT-GPT4-140K.json",  # the repo's spelling, as a renamed download
    "HuatuoGPT2_sft_instruct_GPT4.jsonl",  # the older revision (JSON lines)
)


class HuatuoSFT(SourceFormat):
    """HuatuoGPT2-SFT-GPT4-140K: single-turn GPT-4 medical Q&A (ShareGPT)."""

    format = "huatuo_sft"
    default_treatment = "single_turn_qa"

    def read(self, ref: SourceRef) -> Iterator[SourceItem]:
        if is_file(ref.path):
            yield from read_sharegpt_file(ref, ref.path)
            return
        present = {name.lower(): path for name, path in _by_name(ref.path).items()}
        for name in SFT_FILE_NAMES:
            if name.lower() in present:
                yield from read_sharegpt_file(ref, present[name.lower()])
                return
        yield failure(ref.path, "missing_file",
                      f"no HuatuoGPT2-SFT file in this folder; expected one of {', '.join(SFT_FILE_NAMES)} "
                      f"(or name the file itself as the source path)")


# -- HuatuoGPT2-Pretraining-Instruction -----------------------------------------------------

PRETRAIN_CORPORA = ("Encyclopedia", "Books", "Literature", "Web_Corpus")
_PRETRAIN_NAME = re.compile(r"^HuatuoGPT2_Pretrain_(?:Meidcal|Medical)_(?P<corpus>\w+?)_(?P<lang>cn|en)\.jsonl?$",
                            re.IGNORECASE)


def _canonical_corpus(name: str) -> str | None:
    return next((c for c in PRETRAIN_CORPORA if c.lower() == name.lower()), None)


def pretrain_file_names(corpus: str, lang: str) -> tuple[str, ...]:
    """The names a corpus file may have, preferred first (the upstream misspelling)."""
    return tuple(f"HuatuoGPT2_Pretrain_{spelling}_{corpus}_{lang}{suffix}"
                 for suffix in _SUFFIXES for spelling in ("Meidcal", "Medical"))


class HuatuoPretrainOptions(SourceOptions):
    corpora: list[str] = Field(default=["Encyclopedia", "Books"], min_length=1,
                               description=f"which corpora of the folder to read, in this order; any of {', '.join(PRETRAIN_CORPORA)}")
    lang: Literal["cn", "en"] = Field("cn", description="the language suffix of the files to read")

    @field_validator("corpora")
    @classmethod
    def _known_corpora(cls, value: list[str]) -> list[str]:
        names: list[str] = []
        for name in value:
            canonical = _canonical_corpus(name)
            if canonical is None:
                raise ValueError(f"unknown corpus {name!r}; known: {', '.join(PRETRAIN_CORPORA)}")
            if canonical not in names:
                names.append(canonical)
        return names


class HuatuoPretrain(SourceFormat):
    """HuatuoGPT2-Pretraining-Instruction: Q&A generated from encyclopedias, books, ... (ShareGPT)."""

    format = "huatuo_pretrain"
    default_treatment = "encyclopedia"
    Options = HuatuoPretrainOptions

    def read(self, ref: SourceRef) -> Iterator[SourceItem]:
        options = self.options_of(ref)
        if is_file(ref.path):
            match = _PRETRAIN_NAME.match(basename(ref.path))
            corpus = (_canonical_corpus(match["corpus"]) or match["corpus"]) if match else None
            part = f"{corpus}_{match['lang'].lower()}" if match else None
            yield from self._read_file(ref, ref.path, corpus, part)
            return
        present = {name.lower(): path for name, path in _by_name(ref.path).items()}
        for corpus in options.corpora:
            names = pretrain_file_names(corpus, options.lang)
            path = next((present[n.lower()] for n in names if n.lower() in present), None)
            if path is None:
                yield failure(f"{ref.path} [{corpus}_{options.lang}]", "missing_file",
                              f"no file for corpus {corpus!r} (lang {options.lang!r}) in this folder or its "
                              f"subfolders; expected {' or '.join(names[:2])} (the upstream name is spelt "
                              f"'Meidcal'). Download it, or drop {corpus!r} from the source's `corpora` option.")
                continue
            yield from self._read_file(ref, path, corpus, f"{corpus}_{options.lang}")

    @staticmethod
    def _read_file(ref: SourceRef, path: str, corpus: str | None, part: str | None) -> Iterator[SourceItem]:
        if part is None:
            yield from read_sharegpt_file(ref, path)
        else:
            yield from read_sharegpt_file(ref, path, key_prefix=f"{part}:", category=corpus)
