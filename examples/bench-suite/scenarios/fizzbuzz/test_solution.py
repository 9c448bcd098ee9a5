import unittest
from collections import Counter

from solution import fizzbuzz, sequence


class FizzBuzzTest(unittest.TestCase):
    def test_first_fifteen(self):
        self.assertEqual(
            sequence(15),
            ["1", "2", "Fizz", "4", "Buzz", "Fizz", "7", "8", "Fizz", "Buzz",
             "11", "Fizz", "13", "14", "FizzBuzz"],
        )

    def test_multiples_of_fifteen(self):
        for n in range(15, 15 * 1000, 15):
            self.assertEqual(fizzbuzz(n), "FizzBuzz", n)

    def test_counts_over_a_long_run(self):
        limit = 1_500_000
        counts = Counter(map(fizzbuzz, range(1, limit + 1)))
        self.assertEqual(counts["FizzBuzz"], limit // 15)
        self.assertEqual(counts["Fizz"], limit // 3 - limit // 15)
        self.assertEqual(counts["Buzz"], limit // 5 - limit // 15)


if __name__ == "__main__":
    unittest.main()
