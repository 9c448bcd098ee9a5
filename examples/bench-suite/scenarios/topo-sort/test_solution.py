import random
import unittest

from solution import order


class OrderTest(unittest.TestCase):
    def test_chain(self):
        self.assertEqual(order({"c": ["b"], "b": ["a"]}), ["a", "b", "c"])

    def test_deterministic(self):
        self.assertEqual(order({"d": ["b", "c"], "b": ["a"], "c": ["a"]}), ["a", "b", "c", "d"])

    def test_cycle(self):
        with self.assertRaises(ValueError):
            order({"a": ["b"], "b": ["c"], "c": ["a"], "d": []})

    def test_random_dags(self):
        rng = random.Random(4)
        for _ in range(1_500):
            n = rng.randrange(1, 200)
            graph = {i: [j for j in range(i) if rng.random() < 0.05] for i in range(n)}
            result = order(graph)
            self.assertEqual(sorted(result), list(range(n)))
            position = {node: i for i, node in enumerate(result)}
            for node, deps in graph.items():
                for d in deps:
                    self.assertLess(position[d], position[node])


if __name__ == "__main__":
    unittest.main()
