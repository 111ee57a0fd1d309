"""dg-expmodel: the reasoning experience model of DreamGym.

Today: the versioned prompt / response format, its strict never-raising parser, and the rule-based
reasoning annotator. Training (SFT), inference backends, the SyntheticEnv and the audits are filled in
by issues 6 and 7.
"""

from dg_expmodel._annotate import Annotator, RuleBasedAnnotator
from dg_expmodel._format import (
    FORMAT_VERSION,
    FREE_TEXT,
    RESPONSE_TAGS,
    SYSTEM_PROMPT,
    PromptOptions,
    build_messages,
    format_reward,
    render_prompt,
    render_prompt_body,
    render_response,
    target_of,
)
from dg_expmodel._parse import PARSE_ERRORS, ParseResult, failure_prediction, parse_response

__version__ = "0.1.0"

__all__ = [
    "FORMAT_VERSION",
    "FREE_TEXT",
    "PARSE_ERRORS",
    "RESPONSE_TAGS",
    "SYSTEM_PROMPT",
    "Annotator",
    "ParseResult",
    "PromptOptions",
    "RuleBasedAnnotator",
    "__version__",
    "build_messages",
    "failure_prediction",
    "format_reward",
    "parse_response",
    "render_prompt",
    "render_prompt_body",
    "render_response",
    "target_of",
]
