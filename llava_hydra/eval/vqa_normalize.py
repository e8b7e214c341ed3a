"""VQA answer normalisation and accuracy, as the tools LLaVA-1.5 scores with compute them.

``normalize``: m4c_evaluator.py's ``EvalAIAnswerProcessor`` (TextVQA's scorer, and what
convert_vqav2_for_submission.py writes for the VQAv2 server): lower-case, drop ``,`` ``?``,
split ``'s``, punctuation removed or turned into a space, full stops not before a digit dropped,
number words to digits, articles dropped, contractions restored. Its full-stop pass is
``PERIOD_STRIP.sub("", text, re.UNICODE)``: the third argument of ``Pattern.sub`` is *count*, so
at most ``re.UNICODE`` = 32 full stops go (the official VQA evaluation has the same call); kept.

``textvqa_accuracy``: m4c's TextVQAAccuracyEvaluator: prediction and every human answer
normalised, then min(1, matches / 3) over each leave-one-out set of 9, averaged over the 10 sets.

``vqav2_accuracy``: the official VQA evaluation (GT-Vision-Lab/VQA vqaEval.py, master a013f00) on
the answer LLaVA's converter uploads (``normalize(text)``): answer and human answers lose ``\n``,
``\t`` and outer spaces; when the human answers differ, all of them and the answer get the
punctuation and digit/article passes; when they all agree, neither side is touched (the
uploaded answer must equal the raw human answer); then the same leave-one-out average.
"""

from __future__ import annotations

import re

# The official VQA evaluation's table (data, as published with the VQA challenge's evaluation code).
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas",
    "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}
NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
           "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = {"a", "an", "the"}
PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?",
               "!"]
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")  # sic: "(?!<=" is a look-ahead in the original too
COMMA_STRIP = re.compile(r"(?<=\d)(\,)+(?=\d)")  # m4c_evaluator.py
OFFICIAL_COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")  # vqaEval.py


def punctuation(text: str, comma_strip: re.Pattern = COMMA_STRIP) -> str:
    out = text
    for p in PUNCTUATION:
        if (p + " " in text or " " + p in text) or comma_strip.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return PERIOD_STRIP.sub("", out, re.UNICODE)  # count=32, as both originals call it


def digits_articles(text: str) -> str:
    words = [NUMBERS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def normalize(answer: str) -> str:
    """EvalAIAnswerProcessor()(answer)."""
    text = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return digits_articles(punctuation(text))


def _leave_one_out(pred: str, humans: list[str]) -> float:
    accs = [min(1.0, sum(h == pred for j, h in enumerate(humans) if j != i) / 3) for i in range(len(humans))]
    return sum(accs) / len(accs) if accs else 0.0


def textvqa_accuracy(prediction: str, human_answers: list[str]) -> float:
    """m4c TextVQAAccuracyEvaluator's score of one prediction (10 human answers)."""
    return _leave_one_out(normalize(prediction), [normalize(a) for a in human_answers])


def _clean(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def vqav2_accuracy(prediction: str, human_answers: list[str]) -> float:
    """The official VQA score of the answer LLaVA's converter uploads for ``prediction``."""
    res = _clean(normalize(prediction))
    humans = [_clean(a) for a in human_answers]
    if len(set(humans)) > 1:
        humans = [digits_articles(punctuation(h, OFFICIAL_COMMA_STRIP)) for h in humans]
        res = digits_articles(punctuation(res, OFFICIAL_COMMA_STRIP))
    return _leave_one_out(res, humans)
