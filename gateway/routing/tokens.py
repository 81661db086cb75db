"""Token counts without a tokenizer: characters per prompt token, learned per service from the workers' answers.

Routing counts load in tokens (prompt + expected output in flight, prefill still to do), but tokenizing a long
prompt costs milliseconds of CPU, most of a proxy's budget. The workers count the tokens anyway: every answer
that carries `usage.prompt_tokens` (whole responses always; streams when the client asked for usage) says how
many tokens the prompt the gateway sent had. The ratio of characters sent to tokens reported, averaged over
recent answers (weighted by size, bounded to a plausible range), turns a prompt's characters into an estimate;
until a service has answered, `default_chars_per_token` (4, about English text in BPE vocabularies).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class _Sums:
    chars: float
    tokens: float


class TokenRatio:
    def __init__(
        self,
        default_chars_per_token: float = 4.0,
        *,
        weight: float = 0.02,
        lowest: float = 1.0,
        highest: float = 12.0,
    ) -> None:
        """`weight`: the share of each answer in the running sums (about the last 1 / weight answers count)."""
        self.default = default_chars_per_token
        self.weight = weight
        self.lowest = lowest
        self.highest = highest
        self._sums: dict[str, _Sums] = {}

    def chars_per_token(self, service: str) -> float:
        sums = self._sums.get(service)
        if sums is None or sums.tokens <= 0:
            return self.default
        return min(self.highest, max(self.lowest, sums.chars / sums.tokens))

    def tokens(self, service: str, chars: int) -> int:
        """The estimated token count of `chars` characters of a prompt of `service`."""
        return round(chars / self.chars_per_token(service))

    def observe(self, service: str, chars: int, tokens: int) -> None:
        """A worker reported `tokens` prompt tokens for a prompt of `chars` characters."""
        if chars <= 0 or tokens <= 0:
            return
        sums = self._sums.get(service)
        if sums is None:
            self._sums[service] = _Sums(float(chars), float(tokens))
            return
        keep = 1.0 - self.weight
        sums.chars = sums.chars * keep + chars * self.weight
        sums.tokens = sums.tokens * keep + tokens * self.weight
