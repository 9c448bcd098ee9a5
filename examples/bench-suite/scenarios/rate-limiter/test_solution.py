import random
import unittest

from solution import TokenBucket


class TokenBucketTest(unittest.TestCase):
    def test_burst_then_refuse(self):
        b = TokenBucket(rate=1, capacity=3)
        self.assertEqual([b.allow(0) for _ in range(4)], [True, True, True, False])

    def test_refill(self):
        b = TokenBucket(rate=2, capacity=2)
        b.allow(0), b.allow(0)
        self.assertFalse(b.allow(0.1))
        self.assertTrue(b.allow(0.6))

    def test_idle_does_not_exceed_capacity(self):
        b = TokenBucket(rate=10, capacity=5)
        allowed = sum(b.allow(3600) for _ in range(100))
        self.assertEqual(allowed, 5)

    def test_long_run_rate(self):
        rng = random.Random(1)
        b = TokenBucket(rate=50, capacity=10)
        now, allowed = 0.0, 0
        for _ in range(2_500_000):
            now += rng.random() / 500  # ~1000 requests a second
            allowed += b.allow(now)
        self.assertLessEqual(allowed, 50 * now + 10)


if __name__ == "__main__":
    unittest.main()
