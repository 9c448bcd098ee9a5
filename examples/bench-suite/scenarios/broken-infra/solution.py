from urllib.parse import urlsplit


def split_url(url):
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}[parts.scheme]
    return parts.scheme, parts.hostname, parts.port or default, parts.path or "/"
