import unittest

from solution import from_roman, to_roman


class RomanTest(unittest.TestCase):
    def test_known_values(self):
        cases = {1: "I", 4: "IV", 9: "IX", 14: "XIV", 40: "XL", 90: "XC",
                 400: "CD", 900: "CM", 1994: "MCMXCIV", 2024: "MMXXIV",
                 3999: "MMMCMXCIX"}
        for n, numeral in cases.items():
            self.assertEqual(to_roman(n), numeral)
            self.assertEqual(from_roman(numeral), n)

    def test_out_of_range(self):
        for n in (0, -1, 4000):
            with self.assertRaises(ValueError):
                to_roman(n)

    def test_round_trip(self):
        for _ in range(60):
            for n in range(1, 4000):
                self.assertEqual(from_roman(to_roman(n)), n)

    def test_no_four_repeats(self):
        for n in range(1, 4000):
            s = to_roman(n)
            for ch in "IXC":
                self.assertNotIn(ch * 4, s, n)


if __name__ == "__main__":
    unittest.main()
