class TokenBucket:
    """`rate` tokens a second, bursts of at most `capacity`. `now` is in seconds."""

    def __init__(self, rate, capacity, now=0.0):
        self.rate = rate
        self.capacity = capacity
        self.tokens = float(capacity)
        self.updated = now

    def allow(self, now, cost=1):
        self.tokens += (now - self.updated) * self.rate  # bug: not capped at capacity
        self.updated = now
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False
