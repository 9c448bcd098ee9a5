import base64
import random
import unittest

from solution import decode, encode


class Base64Test(unittest.TestCase):
    def test_rfc_4648_vectors(self):
        for raw, encoded in [(b"", ""), (b"f", "Zg=="), (b"fo", "Zm8="), (b"foo", "Zm9v"),
                             (b"foob", "Zm9vYg=="), (b"fooba", "Zm9vYmE="),
                             (b"foobar", "Zm9vYmFy")]:
            self.assertEqual(encode(raw), encoded)
            self.assertEqual(decode(encoded), raw)

    def test_rejects_garbage(self):
        for bad in ("Zg=", "Z===", "Zm9v!A==", "=Zm9"):
            with self.assertRaises(ValueError, msg=bad):
                decode(bad)

    def test_matches_stdlib_on_random_bytes(self):
        rng = random.Random(2)
        for _ in range(16_000):
            raw = rng.randbytes(rng.randrange(0, 120))
            expected = base64.b64encode(raw).decode()
            self.assertEqual(encode(raw), expected)
            self.assertEqual(decode(expected), raw)


if __name__ == "__main__":
    unittest.main()
