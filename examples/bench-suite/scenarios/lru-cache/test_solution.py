import random
import unittest

from solution import LRUCache


class Model:
    """The obvious, slow LRU: a list ordered from least to most recently used."""

    def __init__(self, capacity):
        self.capacity = capacity
        self.order = []
        self.values = {}

    def get(self, key):
        if key not in self.values:
            return None
        self.order.remove(key)
        self.order.append(key)
        return self.values[key]

    def put(self, key, value):
        if key in self.values:
            self.order.remove(key)
        self.order.append(key)
        self.values[key] = value
        if len(self.order) > self.capacity:
            del self.values[self.order.pop(0)]


class LRUCacheTest(unittest.TestCase):
    def test_evicts_least_recently_used(self):
        c = LRUCache(2)
        c.put("a", 1)
        c.put("b", 2)
        self.assertEqual(c.get("a"), 1)  # a is now the most recent
        c.put("c", 3)
        self.assertNotIn("b", c)
        self.assertEqual(c.get("a"), 1)
        self.assertEqual(c.get("c"), 3)

    def test_update_refreshes(self):
        c = LRUCache(2)
        c.put("a", 1)
        c.put("b", 2)
        c.put("a", 10)
        c.put("c", 3)
        self.assertEqual(c.get("a"), 10)
        self.assertNotIn("b", c)

    def test_rejects_zero_capacity(self):
        with self.assertRaises(ValueError):
            LRUCache(0)

    def test_matches_model_on_random_operations(self):
        rng = random.Random(7)
        for capacity in (1, 3, 16, 64):
            cache, model = LRUCache(capacity), Model(capacity)
            for step in range(160_000):
                key = rng.randrange(capacity * 2)
                if rng.random() < 0.5:
                    cache.put(key, step)
                    model.put(key, step)
                else:
                    self.assertEqual(cache.get(key), model.get(key))
                self.assertLessEqual(len(cache), capacity)


if __name__ == "__main__":
    unittest.main()
