import unittest

from solution import split_url


class SplitUrlTest(unittest.TestCase):
    def test_defaults(self):
        self.assertEqual(split_url("https://example.com"), ("https", "example.com", 443, "/"))

    def test_port_and_path(self):
        self.assertEqual(split_url("http://h:8080/a/b"), ("http", "h", 8080, "/a/b"))


if __name__ == "__main__":
    unittest.main()
