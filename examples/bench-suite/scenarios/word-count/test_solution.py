import random
import unittest

from solution import word_count


class WordCountTest(unittest.TestCase):
    def test_simple(self):
        self.assertEqual(word_count("one fish two fish"), {"one": 1, "fish": 2, "two": 1})

    def test_case_and_punctuation(self):
        self.assertEqual(
            word_count("Go, go, GO! 'Stop' -- don't stop."),
            {"go": 3, "stop": 2, "don't": 1},
        )

    def test_newlines_and_tabs(self):
        self.assertEqual(word_count("a\tb\nc  a"), {"a": 2, "b": 1, "c": 1})

    def test_large_generated_text(self):
        rng = random.Random(42)
        vocabulary = ["alpha", "beta", "gamma", "delta", "it's", "x1", "y2k"]
        expected = {}
        parts = []
        for _ in range(600_000):
            word = rng.choice(vocabulary)
            expected[word] = expected.get(word, 0) + 1
            styled = word.upper() if rng.random() < 0.3 else word
            parts.append(styled + rng.choice([" ", ", ", ".\n", "; ", "! "]))
        self.assertEqual(dict(word_count("".join(parts))), expected)


if __name__ == "__main__":
    unittest.main()
