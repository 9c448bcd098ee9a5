import random
import unittest

from solution import identity, matmul


def random_matrix(rng, rows, cols):
    return [[rng.randrange(-9, 10) for _ in range(cols)] for _ in range(rows)]


class MatmulTest(unittest.TestCase):
    def test_small(self):
        self.assertEqual(matmul([[1, 2], [3, 4]], [[5, 6], [7, 8]]), [[19, 22], [43, 50]])

    def test_rectangular(self):
        self.assertEqual(matmul([[1, 2, 3]], [[1], [2], [3]]), [[14]])
        self.assertEqual(matmul([[1], [2]], [[3, 4]]), [[3, 4], [6, 8]])

    def test_shape_mismatch(self):
        with self.assertRaises(ValueError):
            matmul([[1, 2]], [[1, 2]])

    def test_identity_and_associativity(self):
        rng = random.Random(11)
        n = 100
        a, b, c = (random_matrix(rng, n, n) for _ in range(3))
        self.assertEqual(matmul(a, identity(n)), a)
        self.assertEqual(matmul(identity(n), a), a)
        self.assertEqual(matmul(matmul(a, b), c), matmul(a, matmul(b, c)))


if __name__ == "__main__":
    unittest.main()
