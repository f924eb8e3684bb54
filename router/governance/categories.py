"""Task categories: a fast local classifier from a request to one of CATEGORIES.

Ordered rules over the last user message (the task being asked now), earlier turns only as a
tie-breaker for code. Microseconds per request, no model, deterministic; a request can override
it (`metadata.category` or the `x-router-category` header). Accuracy on public prompts is
measured by `scripts/eval_categories.py`.
"""

from __future__ import annotations

import re

from router.types import ChatRequest, message_text, sample

_LANGS = (
    r"english|spanish|french|german|italian|portuguese|chinese|mandarin|cantonese|japanese|"
    r"korean|russian|arabic|hindi|dutch|swedish|norwegian|danish|finnish|polish|greek|turkish|"
    r"hebrew|vietnamese|thai|indonesian|swahili|latin|czech|hungarian|romanian|ukrainian|"
    r"irish|welsh|tagalog|persian|farsi|urdu|bengali"
)
_RULES: list[tuple[str, re.Pattern[str]]] = [
    (
        "code",
        re.compile(
            r"```|\bdef \w+\(|\bclass \w+[:(]|\bfunction\b|#include|\bimport \w+|=>|\bconsole\.log|"
            r"\bc\+\+|\bc#|std::|\b(python|javascript|typescript|java|golang|rust|ruby|php|swift|"
            r"kotlin|sql|bash|shell script|python script|powershell|html|css|react|django|flask|"
            r"node\.?js|regex|regular expression|api|json|yaml|dockerfile|kubernetes|git|compiler?|"
            r"debug\w*|stack ?trace|traceback|segfault|algorithm|refactor\w*|unit tests?|code|"
            r"coding|programming|zig|haskell|scala|matlab|vba|excel formula|lua|perl|tensorflow|"
            r"pytorch|numpy|pandas|linux|terminal|command line|wget|curl|sdk|frontend|backend|"
            r"database|query|function|variable|compile)\b",
        ),
    ),
    (
        "translate",
        re.compile(
            rf"\btranslat\w*|\bhow (do|would|can|should) (you|i|we) say\b|"
            rf"\bsay\b.*\bin ({_LANGS})\b|"
            rf"\b(in|into|to) ({_LANGS})\b.*\?|\bwhat('s| is| does)\b.*\bin ({_LANGS})\b|"
            rf"\b({_LANGS}) (word|phrase|translation) for\b",
        ),
    ),
    (
        "summarise",
        re.compile(
            r"\bsummar(y|ise|ize|ies)\b|\btl;?dr\b|\bsum (it |this |that )?up\b|\bkey (points|"
            r"takeaways)\b|\bgist of\b|\bin (one|a few|two|three) (sentences?|words|lines)\b|"
            r"\bcondense\b",
        ),
    ),
    (
        "rewrite",
        re.compile(
            r"\b(re-?write|rephrase|reword|paraphrase|proofread|copy-?edit)\b|\bfix (the |my )?"
            r"(grammar|spelling|typos|punctuation|wording)\b|\bimprove (the |my |this )?(text|"
            r"paragraph|email|sentence|wording|writing)\b|\bmake (it|this|the text) (more|less|"
            r"sound)\b|\bpolish (this|my|the)\b|\bcorrect (this|my|the) (text|sentence|grammar)\b",
        ),
    ),
    (
        "writing",
        re.compile(
            r"\b(write|compose|draft|create|craft|generate|come up with)\b.{0,40}\b(story|stories|"
            r"poem|poems|essay|letter|e-?mail|blog|article|song|lyrics|haiku|limerick|speech|script|"
            r"screenplay|cover letter|toast|slogan|tagline|tweet|post|dialogue|scene|chapter|novel|"
            r"ad|advert\w*|description|bio|sonnet)\b|\broleplay\b|\brole-play\b|\bpretend (you|to "
            r"be)\b|\bimagine you\b|\byou are a\b.{0,60}\b(write|tell|describe)\b|"
            r"\b(short story|fan ?fiction|creative writing|lyrics|poem|sonnet|haiku|limerick|song "
            r"(about|for|titled)|story (about|of|where)|tell (me )?a story)\b|\b(escribe|écris|"
            r"schreibe?|scrivi)\b|\b(poema|poème|gedicht|poesia|cuento|historia|chanson|lied)\b|"
            r"诗|故事|小说",
        ),
    ),
    (
        "math/reasoning",
        re.compile(
            r"\d\s*[-+*/x×÷^=]\s*\d|\b(solve|equation|integral|derivative|prove|proof|theorem|"
            r"probability|calculate|compute|matrix|polynomial|lemma|factorial|square root|"
            r"percent(age)? of|what is \d|riddle|logic "
            r"puzzle|deduce|estimate|apr|interest rate|expected value|variance|optimi[sz]ation)\b|"
            r"\b\d+ (plus|minus|times|divided by|multiplied by) \d+|\$[^$]*\\\w+|\\frac|\\sum|"
            r"概率|计算|求解|证明|方程",
        ),
    ),
    (
        "chit-chat",
        re.compile(
            r"^\W*(hi|hello|hey|hiya|howdy|yo|greetings|good (morning|afternoon|evening|night|day)|"
            r"thanks?|thank you|thx|cheers|bye|goodbye|see you|later|ok(ay)?|cool|nice|great|lol|"
            r"haha)\b[\w\s,!.?'’]{0,30}$|\bhow are you\b|\bhow('s| is) (it going|your day)\b|"
            r"\bwhat('s| is) up\b|\bwho (made|built|created|programmed|owns) you\b|\bwho are you\b|"
            r"\bwhat('s| is) your (name|favou?rite|hobby|hobbies|age)\b|\bhow old are you\b|"
            r"\bare you (a |an )?(bot|robot|human|real|ai|computer|person|alive|happy)\b|"
            r"\bdo you (have|like|love|enjoy|feel|dream|sleep)\b|"
            r"\bwhere (are|do) you (from|live)\b|"
            r"\b(tell|give) me (a |another )?(joke|fun fact)\b|\bmeaning of life\b|"
            r"\bwho do you work for\b|\bwhat can (i|you) (ask|do)\b|\byour hobbies\b|"
            r"\bnice to meet you\b|\bi('m| am) (bored|sad|happy|tired|lonely)\b|"
            r"\byour (birthday|name|age|pets?|hobbies|interests|creator|boss|origin|favou?rites?|"
            r"purpose|feelings)\b|\b(where|when) (do|did|were|are) you\b|\byou (come|came) from\b|"
            r"\b(made|designed|built|created|programmed) (by|you)\b|\bhow old you are\b|"
            r"\b(do|would|can|could) you (like|love|enjoy|own|take orders|feel|know about)\b|"
            r"\bgoodbye\b|\bfarewell\b|\bsubjects (do )?you\b",
        ),
    ),
]


# What the rules read of a long message: its first and last 4,000 characters, where the
# instruction is; it keeps classifying any request under a few milliseconds.
SAMPLE_CHARS = 8_000


def classify(request: ChatRequest) -> str:
    # A bounded sample (any request costs the same), lower-cased once: case-insensitive
    # matching is several times slower in `re`.
    last = sample(request.last_user_text or request.text, SAMPLE_CHARS).lower()
    for category, pattern in _RULES:
        if pattern.search(last):
            return category
    users = [m for m in request.messages if m["role"] == "user"]
    earlier = "\n".join(message_text(m) for m in users[:-1])
    if len(users) > 1 and _RULES[0][1].search(sample(earlier, SAMPLE_CHARS).lower()):
        return "code"  # a follow-up in a coding conversation
    return "question-answering" if last.strip() else "other"
