import functools
import random
import unittest

from solution import compare


class CompareTest(unittest.TestCase):
    def test_numeric_not_lexical(self):
        self.assertEqual(compare("1.10.0", "1.9.0"), 1)
        self.assertEqual(compare("1.9.0", "1.10.0"), -1)
        self.assertEqual(compare("2.0.0", "2.0.0"), 0)

    def test_semver_spec_precedence(self):
        chain = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta",
                 "1.0.0-beta.2", "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0"]
        for older, newer in zip(chain, chain[1:]):
            self.assertEqual(compare(older, newer), -1, (older, newer))
            self.assertEqual(compare(newer, older), 1, (newer, older))

    def test_sorting_random_versions(self):
        rng = random.Random(8)
        versions = [f"{rng.randrange(3)}.{rng.randrange(12)}.{rng.randrange(12)}"
                    for _ in range(24_000)]
        ordered = sorted(versions, key=functools.cmp_to_key(compare))
        as_tuples = [tuple(map(int, v.split("."))) for v in ordered]
        self.assertEqual(as_tuples, sorted(as_tuples))


if __name__ == "__main__":
    unittest.main()
