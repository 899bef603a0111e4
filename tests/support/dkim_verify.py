#!/usr/bin/env python3
"""Verify DKIM signatures with dkimpy, an implementation independent of ours.

Usage: python3 dkim_verify.py RECORDS MESSAGE...

RECORDS holds the DNS TXT records, one a line: NAME, a tab, VALUE, e.g.
`s1._domainkey.example.com<TAB>v=DKIM1; k=ed25519; p=...`. No DNS query is made:
dkimpy's lookups are answered from RECORDS only (an unknown name has no record).

For every DKIM-Signature of every MESSAGE (the message exactly as an upstream would
receive it) one line is printed:

    PASS <message> d=<domain> s=<selector> a=<algorithm>
    FAIL <message> d=<domain> s=<selector> a=<algorithm>: <dkimpy's reason>

and a message without any signature prints `FAIL <message>: no DKIM-Signature`.

Exit status: 0 if every signature of every message verifies, 1 if any fails, 2 on a
usage error, 3 if dkimpy or PyNaCl (which dkimpy needs for ed25519-sha256) is missing.
"""

import io
import logging
import sys

try:
    import dkim
    import dkim.util
    import nacl.signing  # noqa: F401  (dkimpy imports it lazily; fail early instead)
except ImportError as missing:
    print(
        f"MISSING python module {missing.name!r}: install dkimpy with ed25519 support "
        "(`python3 -m pip install 'dkimpy[ed25519]'`, which the project's test script does)",
        file=sys.stderr,
    )
    sys.exit(3)


def load_records(path):
    records = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\r\n")
            if not line:
                continue
            name, value = line.split("\t", 1)
            records[name.strip().rstrip(".").lower()] = value.encode("ascii")
    return records


def verify(path, records):
    with open(path, "rb") as f:
        message = f.read()

    def lookup(name, timeout=5):
        if isinstance(name, bytes):
            name = name.decode("ascii")
        return records.get(name.rstrip(".").lower())

    log = io.StringIO()
    logger = logging.getLogger(f"dkim_verify.{path}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    logger.addHandler(logging.StreamHandler(log))

    d = dkim.DKIM(message, logger=logger, minkey=1024)
    signatures = [value for name, value in d.headers if name.lower() == b"dkim-signature"]
    if not signatures:
        print(f"FAIL {path}: no DKIM-Signature")
        return False
    ok = True
    for idx, value in enumerate(signatures):
        tags = dkim.util.parse_tag_value(value)
        label = "d={} s={} a={}".format(
            *(tags.get(t, b"?").decode("ascii", "replace") for t in (b"d", b"s", b"a"))
        )
        log.truncate(0)
        log.seek(0)
        try:
            passed = d.verify(idx=idx, dnsfunc=lookup)
            reason = log.getvalue().strip().replace("\n", " | ")
        except dkim.DKIMException as e:
            passed, reason = False, f"{type(e).__name__}: {e}"
        if passed:
            print(f"PASS {path} {label}")
        else:
            print(f"FAIL {path} {label}: {reason or 'signature did not verify'}")
            ok = False
    return ok


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    records = load_records(argv[1])
    results = [verify(path, records) for path in argv[2:]]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
