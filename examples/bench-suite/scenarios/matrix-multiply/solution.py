def matmul(a, b):
    """The product of two matrices given as lists of rows."""
    if not a or not b or len(a[0]) != len(b):
        raise ValueError("shapes do not match")
    columns = list(zip(*b))
    return [[sum(x * y for x, y in zip(row, col)) for col in columns] for row in a]


def identity(n):
    return [[int(i == j) for j in range(n)] for i in range(n)]
