"""Rule prefilter: cheap checks that reject dialogues no LLM needs to look at."""

from __future__ import annotations

import re
from functools import cached_property

from actors.base import Stage, StageParams, StageResult
from schemas import SourceDialogue, Treatment

# Requests a voice consultation cannot serve: the patient wants to show or send something.
# Kept as data (regexes) so a user can extend them in the config.
DEFAULT_VOICE_IMPOSSIBLE = (
    r"(发|传|上传|拍|看看?|看一下)(一?下|了|给你|给您)?.{0,6}(图片|照片|相片|截图|图像|视频)",
    # 片子 (an X-ray film) only when it is to be sent or looked at: "拍了片子" (had an X-ray)
    # and "发烧…片子" (the 发 of 发烧) are ordinary history.
    r"(传|上传|看看|看一下|看下)(一?下|了|给你|给您)?.{0,6}片子",
    r"(图片|照片|截图|图像|片子)(在|已)?(上面|下面|发|传)",
    r"(填|填写)(一?下)?.{0,4}(表|表格|问卷)",
    r"(表格|问卷)(帮我|给我)?填(写)?(一?下|好)",
    r"(点|点击|打开)(一?下)?.{0,4}(链接|网址)",
    r"(发|共享|分享)(一?下)?.{0,4}(定位|位置)",
    r"https?://|www\.",
)

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")
_MEANINGFUL = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fffA-Za-z0-9]")


class PrefilterParams(StageParams):
    min_patient_chars: int = 6
    """Minimum meaningful characters (CJK, letters, digits) in the first patient turn."""
    min_chinese_ratio: float = 0.5
    """Minimum share of CJK among meaningful characters of the patient turns."""
    chinese_required_for: tuple[Treatment, ...] = ("knowledge_qa", "encyclopedia", "single_turn_qa", "consultation", "cough")
    """Treatments whose text must already be Chinese (safety demonstrations are translated later)."""
    voice_impossible_patterns: tuple[str, ...] = DEFAULT_VOICE_IMPOSSIBLE


class Prefilter(Stage[SourceDialogue, SourceDialogue]):
    """Rejects too-short openings, requests impossible by voice, and non-Chinese text."""

    kind = "prefilter"
    input_model = SourceDialogue
    output_model = SourceDialogue
    Params = PrefilterParams
    params: PrefilterParams

    @cached_property
    def _voice_impossible(self) -> re.Pattern[str]:
        return re.compile("|".join(f"(?:{p})" for p in self.params.voice_impossible_patterns))

    def verdict(self, dialogue: SourceDialogue) -> tuple[str, str] | None:
        """(reason code, detail) if the dialogue must be rejected, else None."""
        patient = [t.text for t in dialogue.turns if t.role == "patient"]
        if not patient:
            return "no_patient_turn", "the dialogue has no patient turn"
        opening = len(_MEANINGFUL.findall(patient[0]))
        if opening < self.params.min_patient_chars:
            return "too_short", f"first patient turn has {opening} meaningful characters"
        for text in patient:
            match = self._voice_impossible.search(text)
            if match:
                return "voice_impossible", f"patient asks for {match.group(0)!r}"
        meaningful = sum(len(_MEANINGFUL.findall(t)) for t in patient)
        chinese = sum(len(_CJK.findall(t)) for t in patient)
        required = dialogue.treatment in self.params.chinese_required_for
        if required and meaningful and chinese / meaningful < self.params.min_chinese_ratio:
            return "not_chinese", f"{chinese}/{meaningful} patient characters are Chinese"
        return None

    def process(self, batch: list[SourceDialogue]) -> StageResult[SourceDialogue]:
        result: StageResult[SourceDialogue] = StageResult()
        for dialogue in batch:
            rejected = self.verdict(dialogue)
            if rejected is None:
                result.accepted.append(dialogue)
            else:
                result.rejected.append(self.reject(dialogue, *rejected))
        return result
