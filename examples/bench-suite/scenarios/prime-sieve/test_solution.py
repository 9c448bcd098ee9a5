import unittest

from solution import primes_up_to


def is_prime(n):
    return n >= 2 and all(n % d for d in range(2, int(n ** 0.5) + 1))


class SieveTest(unittest.TestCase):
    def test_edges(self):
        self.assertEqual(primes_up_to(0), [])
        self.assertEqual(primes_up_to(1), [])
        self.assertEqual(primes_up_to(2), [2])
        self.assertEqual(primes_up_to(30), [2, 3, 5, 7, 11, 13, 17, 19, 23, 29])

    def test_matches_trial_division(self):
        self.assertEqual(primes_up_to(30_000), [n for n in range(30_001) if is_prime(n)])

    def test_prime_counting_function(self):
        # pi(10^k), known values.
        for n, count in [(10, 4), (100, 25), (1_000, 168), (10_000, 1_229),
                         (100_000, 9_592), (1_000_000, 78_498), (5_000_000, 348_513),
                         (10_000_000, 664_579)]:
            self.assertEqual(len(primes_up_to(n)), count, n)


if __name__ == "__main__":
    unittest.main()
