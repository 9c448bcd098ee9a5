def fizzbuzz(n):
    """The FizzBuzz word for n >= 1."""
    if n % 15 == 0:
        return "FizzBuzz"
    if n % 3 == 0:
        return "Fizz"
    if n % 5 == 0:
        return "Buzz"
    return str(n)


def sequence(limit):
    return [fizzbuzz(i) for i in range(1, limit + 1)]
