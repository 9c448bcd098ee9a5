import bisect
import random
import unittest

from solution import find


class FindTest(unittest.TestCase):
    def test_empty(self):
        self.assertEqual(find([], 1), -1)

    def test_middle(self):
        self.assertEqual(find([1, 3, 5, 7, 9], 5), 2)

    def test_first_and_last(self):
        items = [1, 3, 5, 7, 9]
        self.assertEqual(find(items, 1), 0)
        self.assertEqual(find(items, 9), 4)

    def test_single(self):
        self.assertEqual(find([4], 4), 0)

    def test_every_element_of_random_lists(self):
        rng = random.Random(9)
        wrong = []
        for _ in range(6_000):
            items = sorted(rng.sample(range(10_000), rng.randrange(1, 200)))
            for target in items + [-5, 10_001]:
                i = bisect.bisect_left(items, target)
                expected = i if i < len(items) and items[i] == target else -1
                if find(items, target) != expected:
                    wrong.append((len(items), target, expected))
        self.assertEqual(wrong[:3], [], f"{len(wrong)} wrong answers (size, target, expected)")


if __name__ == "__main__":
    unittest.main()
