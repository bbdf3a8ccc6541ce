"""Words of the synthetic corpus. Shared by the corpus generator (what is spoken)
and the tiny RoBERTa tokenizer (what it is trained on), so both agree."""

# Words that carry an emotion when they occur; only part of the utterances use them.
EMOTION_WORDS = {
    "hap": ["great", "wonderful", "love", "happy", "amazing", "fun", "glad", "yes"],
    "exc": ["wow", "fantastic", "brilliant", "party", "win", "awesome"],
    "ang": ["hate", "stupid", "unfair", "furious", "stop", "never", "idiot", "enough"],
    "sad": ["miss", "sorry", "lonely", "lost", "cry", "tired", "gone", "alone"],
    "neu": ["okay", "table", "tomorrow", "paper", "office", "maybe", "form", "line"],
}
# Words that say nothing about the emotion.
NEUTRAL_WORDS = [
    "i", "you", "we", "it", "the", "a", "is", "was", "that", "this", "and", "to", "of",
    "just", "know", "think", "right", "here", "there", "what", "well", "now", "time",
    "day", "go", "come", "want", "need", "have", "do", "get", "said", "about", "really",
    "can't", "don't", "it's", "home", "car", "money", "job", "friend", "mother", "phone",
]


def all_words() -> list[str]:
    """Every word the synthetic corpus can speak, sorted and unique."""
    words = set(NEUTRAL_WORDS)
    for group in EMOTION_WORDS.values():
        words.update(group)
    return sorted(words)
