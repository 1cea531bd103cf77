"""The test server's scripted verdicts: a verdict per image colour, Safe for every other image."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image, ImageStat


@dataclass
class Rule:
    """When the image's mean colour is within ``tolerance`` of ``rgb``, answer with this verdict."""

    rgb: tuple[int, int, int]
    rating: str
    category: str
    rationale: str = "Simulated assessment."
    p_unsafe: float | None = None
    tolerance: int = 24


DEFAULT_RULES = [
    Rule((220, 30, 30), "Unsafe", "O2: Violence, Harm, or Cruelty", "The image is predominantly red (simulated O2)."),
    Rule((30, 30, 30), "Unsafe", "O9: Disasters or Emergencies", "The image is dark (simulated O9).", tolerance=30),
]
SAFE = ("Safe", "NA: None applying", "The image shows nothing that violates the policy (simulated).")


def decide(rules: list[Rule], image: Image.Image) -> tuple[str, str, str, float]:
    """(rating, category, rationale, P(Unsafe)) of the first rule the image's mean colour matches; else Safe."""
    mean = ImageStat.Stat(image.convert("RGB")).mean
    for rule in rules:
        if all(abs(mean[i] - rule.rgb[i]) <= rule.tolerance for i in range(3)):
            p = rule.p_unsafe if rule.p_unsafe is not None else (0.97 if rule.rating == "Unsafe" else 0.03)
            return rule.rating, rule.category, rule.rationale, p
    return (*SAFE, 0.02)
