import csv
import io
import random
import unittest

from solution import fields


class FieldsTest(unittest.TestCase):
    def test_plain(self):
        self.assertEqual(fields("a,b,,c"), ["a", "b", "", "c"])

    def test_quoted(self):
        self.assertEqual(fields('"a,b","say ""hi""",c'), ["a,b", 'say "hi"', "c"])

    def test_unterminated(self):
        with self.assertRaises(ValueError):
            fields('"open')

    def test_matches_csv_module(self):
        rng = random.Random(6)
        alphabet = 'ab ,"x1'
        for _ in range(45_000):
            row = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(8)))
                   for _ in range(rng.randrange(1, 8))]
            buf = io.StringIO()
            csv.writer(buf, lineterminator="").writerow(row)
            self.assertEqual(fields(buf.getvalue()), row)


if __name__ == "__main__":
    unittest.main()
