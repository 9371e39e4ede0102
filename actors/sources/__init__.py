"""Source adapters, one module per corpus format, and their registry.

Each maps its corpus's records to `SourceDialogue` (or a quarantined item with a reason);
`SOURCE_FORMATS` maps the config's `format:` names to them.
"""

from actors.sources.common import SourceFormat, SourceItem, SourceOptions, SourceRef
from actors.sources.cmb import CMBExam
from actors.sources.cmexam import CMExam
from actors.sources.cmtmedqa import CMtMedQA
from actors.sources.huatuo import HuatuoPretrain, HuatuoSFT
from actors.sources.meddg import MedDG
from actors.sources.meddialog import MedDialog
from actors.sources.medsafety import MedSafety
from actors.sources.sharegpt import ShareGPT

SOURCE_FORMATS: dict[str, type[SourceFormat]] = {
    cls.format: cls
    for cls in (ShareGPT, HuatuoSFT, HuatuoPretrain, CMBExam, CMExam, CMtMedQA, MedDG, MedDialog, MedSafety)
}


def source_format(name: str) -> type[SourceFormat]:
    try:
        return SOURCE_FORMATS[name]
    except KeyError:
        raise KeyError(f"unknown source format {name!r}; known: {', '.join(sorted(SOURCE_FORMATS))}") from None


__all__ = ["SOURCE_FORMATS", "SourceFormat", "SourceItem", "SourceOptions", "SourceRef", "source_format"]
