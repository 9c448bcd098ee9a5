import random
import unittest

from solution import merge


def covered(intervals):
    points = set()
    for start, end in intervals:
        points.update(range(start, end + 1))
    return points


class MergeTest(unittest.TestCase):
    def test_overlapping(self):
        self.assertEqual(merge([(1, 4), (2, 6), (8, 10)]), [(1, 6), (8, 10)])

    def test_unsorted_input(self):
        self.assertEqual(merge([(8, 10), (1, 4), (2, 3)]), [(1, 4), (8, 10)])

    def test_touching(self):
        self.assertEqual(merge([(1, 3), (3, 5)]), [(1, 5)])

    def test_random_cover_is_kept_and_result_disjoint(self):
        rng = random.Random(5)
        wrong = []
        for _ in range(40_000):
            intervals = []
            for _ in range(rng.randrange(1, 12)):
                start = rng.randrange(100)
                intervals.append((start, start + rng.randrange(10)))
            result = merge(intervals)
            disjoint = all(end < start for (_, end), (start, _) in zip(result, result[1:]))
            if covered(result) != covered(intervals) or not disjoint:
                wrong.append((intervals, result))
        self.assertEqual(wrong[:3], [], f"{len(wrong)} wrong merges, the first shown")


if __name__ == "__main__":
    unittest.main()
