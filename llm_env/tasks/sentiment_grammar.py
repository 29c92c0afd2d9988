"""A small probabilistic grammar of movie-review-style text for the built-in "sentiment" task.

The grammar is the training corpus and the prompt source of the sentiment RL task: a tiny GPT-2
is pre-trained on reviews sampled from it (so it learns to write fluent positive, negative and
neutral/mixed reviews), and RL then pushes the model to continue a review opening positively,
rewarded by VADER's compound sentiment score.

Every review is ``opening + continuation``:

* ``opening`` is one of :data:`PROMPT_OPENINGS` (2-6 words, sentiment-neutral on its own:
  VADER compound exactly 0.0). It is what the RL task uses as a prompt. The last eight
  openings mix every opening kind, so a task may hold out a tail of the tuple for evaluation.
* ``continuation`` starts with a space and holds one to three clauses/sentences (6-30 words)
  built from many slots: aspects of a film (the acting, the script, the soundtrack, ...),
  adjectives with intensifiers or negation, verb phrases, comparisons, recommendations and
  small neutral facts (genre, setting, runtime, who the reviewer watched it with).
* ``label`` is ``"positive"`` (~40%), ``"negative"`` (~40%) or ``"neutral"`` (~20%; neutral
  facts or mixed opinions such as "had great visuals but a boring plot"). Positive/negative
  continuations are built from words in VADER's lexicon, so the labels agree with VADER.

Text conventions keep word-level tokenization clean: lower-case words (only the opening starts
with a capital; "i" is lower-case inside continuations), punctuation as separate space-delimited
tokens (" great , but slow ."), no apostrophes, ASCII only.

Sampling consumes a block of uniforms drawn from the caller's ``numpy.random.Generator`` per
review and then makes pure-Python choices, so it is both deterministic for a seed and fast.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["PROMPT_OPENINGS", "generate_corpus", "generate_review"]

# ---------------------------------------------------------------------------------------------
# Openings. Kinds: "np" -> the opening is a subject and the continuation starts with a verb
# phrase ("The movie" + " was great ."); "clause" -> the continuation is a full clause
# ("I have to say that" + " it was great ."); "clause1" -> like "clause", but a first-person
# clause also fits ("I watched this film and" + " i loved it ."); "cop" -> the opening ends with
# a copula-like verb and the continuation starts with an adjective phrase
# ("I found this movie" + " dull ."). `work` says whether the subject is the film itself (vs.
# one aspect of it), `plural` selects was/were, and `tense` is "past", "present" or "any".
# ---------------------------------------------------------------------------------------------

# fmt: off
_OPENING_SPECS: tuple[tuple[str, str, bool, bool, str], ...] = (
    # (text, kind, work, plural, tense)
    ("The movie", "np", True, False, "any"),
    ("This film", "np", True, False, "any"),
    ("This movie", "np", True, False, "any"),
    ("The film", "np", True, False, "any"),
    ("Overall the movie", "np", True, False, "any"),
    ("In the end this film", "np", True, False, "any"),
    ("This new sequel", "np", True, False, "any"),
    ("This remake", "np", True, False, "any"),
    ("The whole thing", "np", True, False, "any"),
    ("All in all this movie", "np", True, False, "any"),
    ("The plot of this film", "np", False, False, "any"),
    ("The acting", "np", False, False, "any"),
    ("The script", "np", False, False, "any"),
    ("The soundtrack", "np", False, False, "any"),
    ("The director", "np", False, False, "any"),
    ("The story", "np", False, False, "any"),
    ("The dialogue in this movie", "np", False, False, "any"),
    ("The ending of the film", "np", False, False, "any"),
    ("The cast", "np", False, False, "any"),
    ("The lead actor", "np", False, False, "any"),
    ("Frankly the acting", "np", False, False, "any"),
    ("The music in this film", "np", False, False, "any"),
    ("The visual effects", "np", False, True, "any"),
    ("The characters", "np", False, True, "any"),
    ("The visuals in this movie", "np", False, True, "any"),
    ("The action scenes", "np", False, True, "any"),
    ("I watched this film and", "clause1", True, False, "past"),
    ("Last night I saw this and", "clause1", True, False, "past"),
    ("I have to say that", "clause1", True, False, "any"),
    ("After watching this film I think", "clause", True, False, "any"),
    ("We watched it at home and", "clause1", True, False, "past"),
    ("I saw it in theaters and", "clause1", True, False, "past"),
    ("From the very first scene", "clause1", True, False, "past"),
    ("I went in without expectations and", "clause1", True, False, "past"),
    ("I thought the film was", "cop", True, False, "past"),
    ("I found the plot", "cop", False, False, "past"),
    ("To me the script was", "cop", False, False, "past"),
    ("I would say this film is", "cop", True, False, "present"),
    ("On the whole it was", "cop", True, False, "past"),
    # The last openings are a mix of every kind: tasks may hold them out for evaluation.
    ("This picture", "np", True, False, "any"),
    ("The cinematography", "np", False, False, "any"),
    ("The performances", "np", False, True, "any"),
    ("We rented this movie and", "clause1", True, False, "past"),
    ("In my opinion", "clause", True, False, "any"),
    ("I thought the acting was", "cop", False, False, "past"),
    ("I found this movie", "cop", True, False, "past"),
    ("The pacing of the movie", "np", False, False, "any"),
)
# fmt: on

PROMPT_OPENINGS: tuple[str, ...] = tuple(spec[0] for spec in _OPENING_SPECS)

# ---------------------------------------------------------------------------------------------
# Word lists. Sentiment-bearing lists only hold words with a VADER lexicon score of the right
# sign; "neutral" slots only hold words that are not in the lexicon (score 0).
# ---------------------------------------------------------------------------------------------

# fmt: off
_POS_ADJ = (
    "great", "wonderful", "brilliant", "excellent", "amazing", "fantastic", "superb",
    "beautiful", "charming", "delightful", "gorgeous", "stunning", "hilarious", "fun",
    "enjoyable", "lovely", "perfect", "impressive", "outstanding", "terrific", "clever",
    "powerful", "inspiring", "engaging", "entertaining", "remarkable", "good", "nice", "strong",
    "magnificent", "marvelous", "awesome", "exciting", "thrilling", "heartwarming", "smart",
    "sweet", "funny", "elegant", "splendid", "fabulous", "satisfying", "pleasant", "fascinating",
    "heartfelt", "flawless", "lively", "amusing",
)
_NEG_ADJ = (
    "terrible", "awful", "boring", "dull", "horrible", "bad", "poor", "weak", "stupid", "lame",
    "pathetic", "painful", "annoying", "disappointing", "ugly", "ridiculous", "messy",
    "dreadful", "lousy", "irritating", "miserable", "insulting", "embarrassing", "frustrating",
    "depressing", "worthless", "useless", "lazy", "idiotic", "incompetent", "dumb", "hopeless",
    "tired", "grim", "confusing", "flawed",
)
# Adjectives for "not ..." (negated positives read as clearly negative to VADER).
_NEGATABLE_POS = (
    "good", "great", "funny", "interesting", "exciting", "clever", "entertaining", "enjoyable",
    "impressive", "engaging", "nice", "strong", "smart", "fun", "satisfying",
)
_NEUTRAL_ADJ = (
    "average", "predictable", "typical", "standard", "conventional", "forgettable",
    "ordinary", "about what i expected", "nothing new", "a mixed bag", "mostly forgettable",
    "quite familiar", "a little uneven", "somewhat predictable", "more or less standard",
    "unremarkable",
)
# Neutral descriptions that only fit the film as a whole.
_NEUTRAL_ADJ_WORK = (
    "long", "a bit long", "rather slow", "very talky", "a slow burn", "two hours long",
    "shorter than i expected", "in black and white", "mostly in french", "rated for teens",
)
_POS_ADV = ("beautifully", "perfectly", "wonderfully", "brilliantly")
_NEG_ADV = ("badly", "terribly", "horribly")
_POS_INTENS = (
    "really", "truly", "absolutely", "incredibly", "extremely", "very", "so", "quite",
    "remarkably", "genuinely", "simply", "just", "consistently", "surprisingly",
)
_NEG_INTENS = (
    "really", "absolutely", "incredibly", "extremely", "very", "so", "utterly", "completely",
    "totally", "thoroughly", "simply", "just", "consistently", "unbelievably",
)

# Aspects of a film: (noun phrase without article, plural).
_ASPECTS: tuple[tuple[str, bool], ...] = (
    ("acting", False), ("script", False), ("soundtrack", False), ("director", False),
    ("plot", False), ("dialogue", False), ("cinematography", False), ("pacing", False),
    ("ending", False), ("cast", False), ("lead actor", False), ("lead actress", False),
    ("ensemble cast", False), ("score", False), ("editing", False), ("camera work", False),
    ("set design", False), ("story", False), ("writing", False), ("screenplay", False),
    ("lighting", False), ("music", False), ("final act", False), ("opening scene", False),
    ("first half", False), ("second half", False), ("main character", False),
    ("premise", False), ("direction", False), ("sound design", False), ("climax", False),
    ("plot twist", False), ("narration", False), ("animation", False), ("casting", False),
    ("tone", False), ("production design", False), ("backstory", False),
    ("visual effects", True), ("visuals", True), ("costumes", True), ("characters", True),
    ("performances", True), ("action scenes", True), ("songs", True), ("locations", True),
    ("car chases", True), ("side characters", True), ("set pieces", True),
    ("flashbacks", True), ("dance numbers", True), ("chase scenes", True),
)
# Aspects that read better without an article ("had great acting but a boring plot").
_MASS_ASPECTS = frozenset({
    "acting", "dialogue", "cinematography", "pacing", "editing", "camera work", "set design",
    "writing", "lighting", "music", "direction", "sound design", "narration", "animation",
    "casting", "production design",
})
_WORK_NOUNS = (
    "film", "movie", "picture", "experience", "ride", "watch", "production", "debut",
    "piece of cinema", "piece of work", "story", "effort",
)
_GENRES = (
    "drama", "western", "sequel", "remake", "musical", "documentary", "family film",
    "action film", "animated film", "science fiction film", "mystery", "period piece",
    "spy film", "road movie", "sports drama", "courtroom drama", "costume drama",
    "superhero movie", "coming of age story", "heist movie", "space opera", "biopic",
    "detective story", "buddy movie", "monster movie", "adaptation", "indie film",
)
_TOPICS = (
    "a family", "two brothers", "two sisters", "a small town", "a road trip", "a detective",
    "an old man", "a young woman", "a journalist", "a teacher", "a musician", "a lawyer",
    "a farmer", "a chef", "a pilot", "a boxer", "a painter", "a nurse", "a scientist",
    "an old painting", "a cargo ship", "an old house", "a long summer", "a band on tour",
    "a chess player", "a taxi driver", "an astronaut", "a retired spy", "a robot",
)
_PLACES = (
    "a small town", "new york", "paris", "london", "the desert", "space", "the future",
    "the eighties", "the seventies", "a big city", "the mountains", "a high school",
    "an old house", "the countryside", "tokyo", "a tiny island", "the arctic", "rome",
    "a coastal village", "the nineteen fifties", "a submarine", "a train", "mexico",
)
_SOURCES = (
    "a memoir", "a comic book", "a stage show", "a video game", "an old tv show",
    "a short story", "a famous book", "a series of articles", "a radio drama",
)
_COMPANY = (
    "my wife", "my husband", "my kids", "my parents", "my brother", "my sister",
    "my roommate", "my family", "my dad", "my mom", "my neighbor", "my cousin",
    "a coworker", "my grandparents",
)
_WHEN = (
    "last night", "on a sunday afternoon", "last weekend", "on a long flight", "at the cinema",
    "on tv", "at home", "on a quiet evening", "on opening night", "over the winter break",
    "on a monday night", "at a small theater", "on my laptop", "yesterday",
)
_AUDIENCE = (
    "anyone", "everyone", "fans of the genre", "the whole family", "anyone who watches movies",
    "families", "kids and adults alike", "movie fans", "all ages", "my coworkers",
    "fans of the director", "anyone looking for a night in",
)
_AUDIENCE_NEG = (
    "anyone", "fans of the genre", "families", "movie fans", "kids or adults", "my coworkers",
    "fans of the director", "my neighbors", "people my age",
)
_CMP_POS = (
    "the original", "the book", "the first one", "the trailer suggested", "i expected",
    "most films this year", "the last film by this director", "the reviews said",
    "its reputation", "anything else out right now",
)
_CMP_NEG = (
    "the first one", "the book", "the trailer suggested", "i thought", "most films this year",
    "the last film by this director", "the reviews said", "anything else out right now",
)
_CMP_ASPECT = (
    "in the first one", "the rest of the film", "i expected", "the trailer suggested",
    "in most films this year", "in the book",
)
_TAILS = (
    "from start to finish", "from beginning to end", "in every way", "throughout",
    "all the way through", "on every level", "at every turn", "for the whole runtime",
)
_WASTE_NOUNS = (
    "waste of time", "mess", "disaster", "disappointment", "bore", "waste of money", "failure",
    "waste of effort",
)
_WHAT_A_NEG = (
    "waste of time", "waste of money", "waste of energy", "mess", "disaster", "disappointment",
    "bad idea", "terrible mess", "boring mess",
)
# fmt: on


class _Picker:
    """Pure-Python choices fed by blocks of uniforms drawn from a numpy Generator."""

    __slots__ = ("_buf", "_i", "_rng")

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._buf: list[float] = rng.random(64).tolist()
        self._i = 0

    def u(self) -> float:
        if self._i >= len(self._buf):
            self._buf = self._rng.random(64).tolist()
            self._i = 0
        x = self._buf[self._i]
        self._i += 1
        return x

    def pick(self, seq: Sequence[str]) -> str:
        return seq[int(self.u() * len(seq))]

    def chance(self, p: float) -> bool:
        return self.u() < p

    def weighted(self, weights: Sequence[float]) -> int:
        x = self.u() * sum(weights)
        for i, w in enumerate(weights):
            x -= w
            if x < 0:
                return i
        return len(weights) - 1


def _article(word: str) -> str:
    if word.startswith(("use", "uni", "one", "eu")):
        return "a"
    return "an" if word[0] in "aeiou" else "a"


def _with_article(phrase: str) -> str:
    return f"{_article(phrase)} {phrase}"


def _be(plural: bool, tense: str) -> str:
    if tense == "past":
        return "were" if plural else "was"
    return "are" if plural else "is"


def _verb(stem: str, plural: bool, tense: str) -> str:
    """Regular verb agreement: work -> worked / works / work."""
    if tense == "past":
        return stem + ("d" if stem.endswith("e") else "ed")
    return stem if plural else stem + "s"


def _aspect(p: _Picker) -> tuple[str, bool]:
    return _ASPECTS[int(p.u() * len(_ASPECTS))]


def _adjp(p: _Picker, sign: str, allow_not: bool = True) -> str:
    """Adjective phrase with an optional intensifier (or, for negatives, "not <positive>")."""
    if sign == "pos":
        adj = p.pick(_POS_ADJ)
        return f"{p.pick(_POS_INTENS)} {adj}" if p.chance(0.55) else adj
    if sign == "neg":
        if allow_not and p.chance(0.15):
            core = f"not {p.pick(('very ', 'particularly ', 'at all ', '', ''))}"
            return core + p.pick(_NEGATABLE_POS)
        adj = p.pick(_NEG_ADJ)
        return f"{p.pick(_NEG_INTENS)} {adj}" if p.chance(0.55) else adj
    return p.pick(_NEUTRAL_ADJ)


def _mixed_pair(p: _Picker) -> tuple[str, str]:
    """A positive and a negative adjective in random order (for "X in places but Y ...")."""
    pair = (p.pick(_POS_ADJ), p.pick(_NEG_ADJ))
    return pair if p.chance(0.5) else (pair[1], pair[0])


def _end(p: _Picker, label: str) -> str:
    if label != "neutral" and p.chance(0.15):
        return " !"
    return " ."


# --- first clause: predicate after a subject --------------------------------------------------


def _pred_pos(p: _Picker, work: bool, plural: bool, tense: str) -> str:
    be = _be(plural, tense)
    r = p.weighted((5, 2, 2, 2, 1.5, 1.5))
    if r == 1 and plural:
        r = 0
    if r == 0:
        s = f"{be} {_adjp(p, 'pos')}"
        if p.chance(0.35):
            s += f" {p.pick(_TAILS)}"
        return s
    if r == 1:
        nouns = _WORK_NOUNS if work else ("surprise", "highlight", "treat", "revelation")
        return f"{be} {_with_article(_adjp(p, 'pos'))} {p.pick(nouns)}"
    if r == 2:
        if work:
            return p.pick(
                (
                    f"{be} one of the best {p.pick(('films', 'movies', 'pictures'))} i have "
                    f"{p.pick(('ever seen', 'seen in years', 'seen', 'seen this decade'))}",
                    f"{be} {p.pick(('even ', 'much ', 'far ', ''))}better than {p.pick(_CMP_POS)}",
                    f"{be} {p.pick(('a true', 'a real', 'an absolute'))} "
                    f"{p.pick(('masterpiece', 'triumph', 'treat', 'joy to watch', 'pleasure'))}",
                )
            )
        return p.pick(
            (
                f"{be} the best part of the {p.pick(('film', 'movie', 'whole thing'))}",
                f"{be} the strongest thing about it",
                f"{be} {p.pick(('even ', 'much ', ''))}better than {p.pick(_CMP_ASPECT)}",
            )
        )
    if r == 3:
        return p.pick(
            (
                f"made me {p.pick(('laugh out loud', 'smile', 'laugh', 'smile the whole time'))}",
                f"won me over {p.pick(('completely', 'right away', 'in minutes', 'easily'))}",
                f"impressed me {p.pick(('deeply', 'greatly', 'a lot', 'from the start'))}",
                f"left me {p.pick(('happy', 'inspired', 'smiling', 'delighted', 'pleased'))}",
                f"kept me {p.pick(('entertained', 'interested', 'happy'))} {p.pick(_TAILS)}",
                f"{'deserve' if plural else 'deserves'} {p.pick(('every award it gets', 'all the praise', 'an award'))}",
            )
        )
    if r == 4:
        return f"{_verb('work', plural, tense)} {p.pick(_POS_ADV)}"
    # never + negative word reads positive to VADER
    return f"{be} never {p.pick(('boring', 'dull', 'lame', 'annoying', 'weak'))}"


def _pred_neg(p: _Picker, work: bool, plural: bool, tense: str) -> str:
    be = _be(plural, tense)
    r = p.weighted((5, 2, 2, 2, 1.5))
    if r == 1 and plural:
        r = 0
    if r == 0:
        s = f"{be} {_adjp(p, 'neg')}"
        if p.chance(0.3) and " not " not in s:
            s += f" {p.pick(_TAILS)}"
        return s
    if r == 1:
        if work and p.chance(0.5):
            filler = p.pick(("complete ", "total ", "real ", "massive ", ""))
            noun = p.pick(_WASTE_NOUNS)
            return f"{be} {_with_article(filler + noun)}"
        nouns = _WORK_NOUNS if work else ("letdown", "misstep", "weak spot", "problem")
        return f"{be} {_with_article(_adjp(p, 'neg', allow_not=False))} {p.pick(nouns)}"
    if r == 2:
        if work:
            return p.pick(
                (
                    f"{be} one of the worst {p.pick(('films', 'movies', 'pictures'))} i have "
                    f"{p.pick(('ever ', ''))}seen",
                    f"{be} {p.pick(('even ', 'much ', 'far ', ''))}worse than {p.pick(_CMP_NEG)}",
                )
            )
        return p.pick(
            (
                f"{be} the weakest part of the {p.pick(('film', 'movie', 'whole thing'))}",
                f"{be} the worst thing about it",
                f"{be} {p.pick(('even ', 'much ', ''))}worse than {p.pick(_CMP_ASPECT)}",
            )
        )
    if r == 3:
        if work:
            spoil = (
                f"{_verb('waste', plural, tense)} "
                f"{p.pick(('two hours of my life', 'my whole evening', 'the entire cast'))}"
            )
        else:
            spoil = f"{_verb('ruin', plural, tense)} the {p.pick(('film', 'movie', 'whole thing'))}"
        return p.pick(
            (
                f"bored me {p.pick(('to tears', 'to death', 'stiff', 'within minutes'))}",
                f"left me {p.pick(('bored', 'annoyed', 'disappointed', 'confused', 'tired'))}",
                f"{_verb('fail', plural, tense)} {p.pick(('completely', 'on every level', 'badly'))}",
                spoil,
                f"annoyed me {p.pick(_TAILS)}",
            )
        )
    verb = _verb("work", plural, tense)
    return (
        f"{be} {p.pick(_NEG_ADV)} {p.pick(('made', 'done', 'written', 'put together'))}"
        if p.chance(0.6)
        else f"{verb} {p.pick(_NEG_ADV)}"
    )


def _pred_neu(p: _Picker, work: bool, plural: bool, tense: str) -> str:
    be = _be(plural, tense)
    r = p.weighted((3, 3, 1.5, 1.5, 2))
    if r == 0:
        if work and p.chance(0.4):
            return f"{be} {p.pick(_NEUTRAL_ADJ_WORK)}"
        return f"{be} {_adjp(p, 'neu')}"
    if r == 1 and work and not plural:
        a1, pl1 = _aspect(p)
        a2, pl2 = _aspect(p)
        if a1 == a2:
            a2, pl2 = ("plot", False) if a1 != "plot" else ("acting", False)
        first = _adjp(p, "pos") + " " + a1
        second = _adjp(p, "neg", allow_not=False) + " " + a2
        if not (pl1 or a1 in _MASS_ASPECTS):
            first = _with_article(first)
        if not (pl2 or a2 in _MASS_ASPECTS):
            second = _with_article(second)
        if p.chance(0.5):
            first, second = second, first
        had = "had" if tense == "past" else "has"
        return f"{had} {first} but {second}"
    if r == 1:
        first, second = _mixed_pair(p)
        return (
            f"{be} {first} at first but "
            f"{p.pick(('got', 'became') if tense == 'past' else ('gets', 'becomes'))} "
            f"{second} later"
        )
    if r == 2:
        first, second = _mixed_pair(p)
        return f"{be} {first} in places but {second} in {p.pick(('others', 'the rest'))}"
    if r == 3:
        return f"{be} neither {p.pick(_POS_ADJ)} nor {p.pick(_NEG_ADJ)}"
    if work and not plural:
        if p.chance(0.5):
            return f"{be} {_with_article(p.pick(_GENRES))} about {p.pick(_TOPICS)}"
        return f"{be} based on {p.pick(_SOURCES)}"
    return f"{be} {p.pick(('fine', 'okay', 'acceptable', 'alright'))} i guess"


_PREDS: dict[str, Callable[[_Picker, bool, bool, str], str]] = {
    "positive": _pred_pos,
    "negative": _pred_neg,
    "neutral": _pred_neu,
}


def _first_person(p: _Picker, label: str, tense: str) -> str:
    if label == "positive":
        return p.pick(
            (
                f"i {p.pick(('loved', 'enjoyed', 'adored', 'really enjoyed', 'truly loved'))} "
                f"{p.pick(('it', 'every minute of it', 'the whole thing', 'it from start to finish'))}",
                f"i was {p.pick(_POS_INTENS)} {p.pick(('impressed', 'delighted', 'entertained'))}",
                f"i {p.pick(('laughed', 'smiled'))} {p.pick(('the whole time', 'all the way through'))}",
            )
        )
    if label == "negative":
        return p.pick(
            (
                f"i {p.pick(('hated', 'disliked', 'regretted'))} "
                f"{p.pick(('it', 'every minute of it', 'the whole thing', 'watching it'))}",
                f"i was {p.pick(_NEG_INTENS)} {p.pick(('disappointed', 'bored', 'annoyed'))}",
            )
        )
    return p.pick(
        (
            "i have mixed feelings about it",
            f"i thought it was {_adjp(p, 'neu')}",
            f"i am {p.pick(('still unsure', 'not sure', 'of two minds'))} about it",
        )
    )


def _first_clause(p: _Picker, kind: str, work: bool, plural: bool, label: str, tense: str) -> str:
    pred = _PREDS[label]
    if kind == "np":
        return pred(p, work, plural, tense)
    if kind == "cop":
        if label == "neutral":
            r = p.weighted((3, 1, 1))
            if r == 0:
                return _adjp(p, "neu")
            if r == 1:
                first, second = _mixed_pair(p)
                return f"{first} in places but {second} in others"
            return f"neither {p.pick(_POS_ADJ)} nor {p.pick(_NEG_ADJ)}"
        s = _adjp(p, "pos" if label == "positive" else "neg")
        if p.chance(0.35) and not s.startswith("not "):
            s += f" {p.pick(_TAILS)}"
        return s
    # full clause; a first-person clause only after openings of kind "clause1"
    r = p.weighted((2, 2, 1.5 if kind == "clause1" else 0.0))
    if r == 0:
        return "it " + pred(p, True, False, tense)
    if r == 1:
        a, pl = _aspect(p)
        return f"the {a} " + pred(p, False, pl, tense)
    return _first_person(p, label, tense)


# --- extra sentences ---------------------------------------------------------------------------


def _aspect_clause(p: _Picker, sign: str, tense: str) -> str:
    """ "the <aspect> was <adjective phrase> [too]" -- also used after ", and"."""
    a, pl = _aspect(p)
    adjp = _adjp(p, sign)
    s = f"the {a} {_be(pl, tense)} {adjp}"
    if sign == "pos":
        s += p.pick((" too", " as well", "", ""))
    elif sign == "neg" and "not " not in adjp:
        s += p.pick((" too", ""))
    return s


_SIGN = {"positive": "pos", "negative": "neg", "neutral": "neu"}


def _extra_pos(p: _Picker, tense: str) -> str:
    r = p.weighted((4, 2, 1.5, 1, 1.5, 1, 1, 1, 1.5, 1.5, 1, 1, 1))
    if r == 0:
        return _aspect_clause(p, "pos", tense)
    if r == 1:
        return (
            f"i would {p.pick(('highly ', 'definitely ', 'happily ', ''))}recommend it to "
            f"{p.pick(_AUDIENCE)}"
        )
    if r == 2:
        return (
            f"i {p.pick(('loved', 'enjoyed'))} every {p.pick(('minute', 'second', 'scene'))} of it"
        )
    if r == 3:
        return (
            f"{p.pick(('go see it', 'see it', 'watch it'))} "
            f"{p.pick(('on the big screen', 'as soon as you can', 'with your family', 'tonight'))}"
            f" , you will love it"
        )
    if r == 4:
        return f"it is {p.pick(('even ', 'much ', ''))}better than {p.pick(_CMP_POS)}"
    if r == 5:
        return f"what {_with_article(p.pick(_POS_ADJ))} {p.pick(_WORK_NOUNS)}"
    if r == 6:
        return (
            f"i will {p.pick(('definitely', 'happily', 'gladly', 'certainly'))} watch it "
            f"{p.pick(('again', 'again soon', 'a second time'))}"
        )
    if r == 7:
        return (
            f"{p.pick(('easily', 'certainly', 'clearly'))} one of the best "
            f"{p.pick(('films', 'movies'))} of the year"
        )
    if r == 8:
        part = p.pick(("first half", "middle section", "pacing", "second act", "sound mix"))
        flaw = p.pick(("a bit slow", "uneven", "not perfect", "a bit rough", "too loud"))
        return (
            f"the {part} {_be(False, tense)} {flaw} at times , but it {_be(False, tense)} still "
            f"{_adjp(p, 'pos')}"
        )
    if r == 9:
        a1, _ = _aspect(p)
        a2, _ = _aspect(p)
        if a1 == a2:
            return f"the {a1} in particular {_be(False, tense)} {_adjp(p, 'pos')}"
        return f"the {a1} and the {a2} {_be(True, tense)} both {p.pick(_POS_ADJ)}"
    if r == 10:
        return p.pick(
            ("never a dull moment", "never boring for a second", "not a single boring scene")
        )
    if r == 11:
        return (
            f"{p.pick(('nine', 'ten'))} out of ten , "
            f"{p.pick(('great', 'wonderful', 'excellent', 'brilliant'))} work"
        )
    return f"it had me {p.pick(('laughing', 'smiling'))} {p.pick(_TAILS)}"


def _extra_neg(p: _Picker, tense: str) -> str:
    r = p.weighted((4, 2, 1.5, 1, 1.5, 1.5, 1, 1, 1.5, 1.5, 1))
    if r == 0:
        return _aspect_clause(p, "neg", tense)
    if r == 1:
        return f"i would not recommend it to {p.pick(_AUDIENCE_NEG)}"
    if r == 2:
        return (
            f"i {p.pick(('hated', 'disliked'))} every {p.pick(('minute', 'second', 'scene'))} of it"
        )
    if r == 3:
        return f"avoid {p.pick(('it', 'this one'))} {p.pick(('at all costs', 'if you can'))}"
    if r == 4:
        return f"it is {p.pick(('even ', 'much ', ''))}worse than {p.pick(_CMP_NEG)}"
    if r == 5:
        return "what " + _with_article(p.pick(_WHAT_A_NEG))
    if r == 6:
        return (
            f"i {p.pick(('almost', 'nearly'))} fell asleep "
            f"{p.pick(('halfway through', 'after twenty minutes', 'in the first hour'))}"
            f" , it was so {p.pick(('boring', 'dull', 'tedious and dull'))}"
        )
    if r == 7:
        return f"one of the worst {p.pick(('films', 'movies'))} of the year"
    if r == 8:
        a, pl = _aspect(p)
        ok = p.pick(("decent", "fine", "okay", "not terrible"))
        return f"the {a} {_be(pl, tense)} {ok} , but it {_be(False, tense)} still {_adjp(p, 'neg')}"
    if r == 9:
        a1, _ = _aspect(p)
        a2, _ = _aspect(p)
        if a1 == a2:
            return f"the {a1} in particular {_be(False, tense)} {_adjp(p, 'neg')}"
        return f"the {a1} and the {a2} {_be(True, tense)} both {p.pick(_NEG_ADJ)}"
    return (
        f"{p.pick(('one', 'two', 'three'))} out of ten , "
        f"{p.pick(('terrible', 'awful', 'bad', 'lazy', 'sloppy and bad'))} work"
    )


def _extra_neu(p: _Picker, tense: str) -> str:
    r = p.weighted((3, 1, 1.5, 1.5, 1, 1, 1, 1, 1, 1))
    if r == 0:
        a1, pl1 = _aspect(p)
        a2, pl2 = _aspect(p)
        good = f"the {a1} {_be(pl1, tense)} {_adjp(p, 'pos')}"
        bad = f"the {a2} {_be(pl2, tense)} {_adjp(p, 'neg')}"
        if p.chance(0.5):
            return f"{good} , but {bad}"
        return f"{bad} , but {good}"
    if r == 1:
        return (
            f"it runs {p.pick(('for ', ''))}about "
            f"{p.pick(('two', 'three', 'one and a half', 'two and a half'))} hours"
        )
    if r == 2:
        g = _with_article(p.pick(_GENRES))
        if p.chance(0.5):
            return f"it is {g} about {p.pick(_TOPICS)}"
        return f"it is {g} set in {p.pick(_PLACES)}"
    if r == 3:
        return f"i watched it {p.pick(_WHEN)} with {p.pick(_COMPANY)}"
    if r == 4:
        return "i have mixed feelings about it"
    if r == 5:
        return f"it is based on {p.pick(_SOURCES)}"
    if r == 6:
        return _aspect_clause(p, "neu", tense)
    if r == 7:
        return f"i might watch it again {p.pick(('someday', 'at some point', 'on tv'))}"
    if r == 8:
        return (
            f"it came out {p.pick(('last year', 'in the summer', 'a few years ago', 'in may'))}"
            f" and {p.pick(('few people', 'many people', 'some critics'))} talked about it"
        )
    return f"it is {_with_article(p.pick(_GENRES))} like many others"


_EXTRAS: dict[str, Callable[[_Picker, str], str]] = {
    "positive": _extra_pos,
    "negative": _extra_neg,
    "neutral": _extra_neu,
}

_LABELS = ("positive", "negative", "neutral")
_LABEL_WEIGHTS = (0.4, 0.4, 0.2)
_MIN_WORDS, _MAX_WORDS = 6, 30
_PUNCT = frozenset({",", ".", "!"})


def _n_words(text: str) -> int:
    return sum(1 for tok in text.split() if tok not in _PUNCT)


def _continuation(p: _Picker, kind: str, work: bool, plural: bool, tense: str, label: str) -> str:
    if tense == "any":
        tense = "past" if p.chance(0.7) else "present"
    text = " " + _first_clause(p, kind, work, plural, label, tense)
    extra = _EXTRAS[label]
    if p.chance(0.2):
        # Join a second clause with a comma instead of a full stop.
        text += " , and " + _aspect_clause(p, _SIGN[label], tense)
    text += _end(p, label)
    n_extra = p.weighted((0.4, 0.45, 0.15))
    for _ in range(n_extra):
        text += " " + extra(p, tense) + _end(p, label)
    while _n_words(text) < _MIN_WORDS:
        text += " " + extra(p, tense) + _end(p, label)
    return text


def generate_review(rng: np.random.Generator) -> tuple[str, str, str]:
    """Return ``(opening, continuation, label)`` with label in {"positive","negative","neutral"}.

    ``opening`` is one of :data:`PROMPT_OPENINGS`; the full review text is
    ``opening + continuation``, where ``continuation`` starts with a space
    (e.g. ``" was a delight from start to finish ."``).
    """
    p = _Picker(rng)
    label = _LABELS[p.weighted(_LABEL_WEIGHTS)]
    text, kind, work, plural, tense = _OPENING_SPECS[int(p.u() * len(_OPENING_SPECS))]
    while True:
        cont = _continuation(p, kind, work, plural, tense, label)
        if _n_words(cont) <= _MAX_WORDS:
            return text, cont, label


def generate_corpus(n: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """``n`` reviews, deterministic for a given seed (``numpy.random.default_rng(seed)``)."""
    rng = np.random.default_rng(seed)
    return [generate_review(rng) for _ in range(n)]
