import json
import random
import unittest

from solution import resolve

RFC_EXAMPLE = json.loads(r'''{
  "foo": ["bar", "baz"], "": 0, "a/b": 1, "c%d": 2, "e^f": 3,
  "g|h": 4, "i\\j": 5, "k\"l": 6, " ": 7, "m~n": 8
}''')


def escape(token):
    return token.replace("~", "~0").replace("/", "~1")


def leaves(value, path=""):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from leaves(v, f"{path}/{escape(k)}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from leaves(v, f"{path}/{i}")
    else:
        yield path, value


def random_document(rng, depth):
    if depth == 0 or rng.random() < 0.2:
        return rng.randrange(1_000_000)
    if rng.random() < 0.5:
        return [random_document(rng, depth - 1) for _ in range(rng.randrange(1, 5))]
    keys = ["a", "b/c", "~", "~1", "x~0y", "", "k"]
    return {rng.choice(keys): random_document(rng, depth - 1) for _ in range(rng.randrange(1, 5))}


class JsonPointerTest(unittest.TestCase):
    def test_rfc_6901_examples(self):
        cases = {"": RFC_EXAMPLE, "/foo": ["bar", "baz"], "/foo/0": "bar", "/": 0,
                 "/a~1b": 1, "/c%d": 2, "/e^f": 3, "/g|h": 4, "/i\\j": 5,
                 "/k\"l": 6, "/ ": 7, "/m~0n": 8}
        for pointer, expected in cases.items():
            self.assertEqual(resolve(RFC_EXAMPLE, pointer), expected, pointer)

    def test_escape_order(self):
        self.assertEqual(resolve({"~1": "tilde-one", "/": "slash"}, "/~01"), "tilde-one")

    def test_missing(self):
        for pointer in ("/nope", "/foo/2", "/foo/01", "/foo/-", "/foo/0/x"):
            with self.assertRaises(KeyError, msg=pointer):
                resolve(RFC_EXAMPLE, pointer)

    def test_every_leaf_of_random_documents(self):
        rng = random.Random(3)
        checked = 0
        for _ in range(2_500):
            doc = random_document(rng, 6)
            for pointer, value in leaves(doc):
                self.assertEqual(resolve(doc, pointer), value)
                checked += 1
        self.assertGreater(checked, 10_000)


if __name__ == "__main__":
    unittest.main()
