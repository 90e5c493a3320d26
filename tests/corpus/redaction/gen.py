"""Generates kla's labelled redaction corpus (corpus.jsonl beside this file).

    python3 tests/corpus/redaction/gen.py      # with Faker as pinned in tests/py/requirements.txt

Each line is {"text": ..., "labels": [{"detector": ..., "value": ...}]}: a sentence holding planted values, each
labelled with the detector that must find it. Lines with "lookalike": true hold only values that must stay
untouched (UUIDs, trace and span ids, git SHAs, timestamps, version numbers, order numbers, amounts, IPv4
addresses, which are off by default). The Rust test tests/it/redaction_corpus.rs reads the file. Personal data comes
from Faker; secret formats (keys, tokens, JWTs, PEM blocks) are built here from random characters, in the vendors'
published shapes. Deterministic: fixed seed and fixed date ranges, so a re-run rewrites the same file.
"""

import base64
import json
import os
import random
import string
import uuid
from datetime import datetime

from faker import Faker

SEED = 19
N = 200  # labelled lines per detector
N_LOOKALIKE = 6000

random.seed(SEED)
Faker.seed(SEED)
fake = Faker("en_US")
eu = {loc: Faker(loc) for loc in ["de_DE", "en_GB", "fr_FR", "nl_NL", "es_ES", "it_IT"]}
for i, f in enumerate(eu.values()):
    f.seed_instance(SEED + i)

ALNUM = string.ascii_letters + string.digits
B64URL = ALNUM + "-_"


def rand(chars, n):
    return "".join(random.choice(chars) for _ in range(n))


def mixed(n):
    # Random keys mix upper, lower and digits; make sure all three appear.
    while True:
        s = rand(ALNUM, n)
        if any(c.isupper() for c in s) and any(c.islower() for c in s) and any(c.isdigit() for c in s):
            return s


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


TEMPLATES = [
    "{v}",
    "please contact {v} today",
    "value={v}",
    '{{"note": "saw {v} in the ticket"}}',
    "the customer said: {v}.",
    "[{v}]",
    "  {v}  and more text after it",
]


def sentence(v):
    return random.choice(TEMPLATES).format(v=v)


def group(s, sizes, sep):
    out, i = [], 0
    for n in sizes:
        out.append(s[i : i + n])
        i += n
    if i < len(s):
        out.append(s[i:])
    return sep.join(x for x in out if x)


def card():
    kind = random.choice(["visa16", "visa13", "visa19", "mastercard", "amex", "discover", "diners", "jcb16", "jcb15", "maestro"])
    n = fake.credit_card_number(card_type=kind)
    style = random.random()
    if style < 0.5 or len(n) not in (15, 16):
        return n
    sep = random.choice([" ", "-"])
    if len(n) == 15:
        return group(n, [4, 6, 5], sep)
    return group(n, [4, 4, 4, 4], sep)


def iban():
    f = random.choice(list(eu.values()))
    v = f.iban()
    return group(v, [4] * 9, " ") if random.random() < 0.4 else v


def jwt():
    header = {"alg": random.choice(["HS256", "RS256", "ES256"]), "typ": "JWT"}
    payload = {"sub": str(fake.random_int(1, 10**6)), "name": fake.name(), "iat": int(fake.unix_time(start_datetime=datetime(2020, 1, 1), end_datetime=datetime(2026, 1, 1)))}
    sig = base64.urlsafe_b64encode(os.urandom(32) if False else bytes(random.getrandbits(8) for _ in range(32)))
    return ".".join([b64url(json.dumps(header).encode()), b64url(json.dumps(payload).encode()), sig.rstrip(b"=").decode()])


def pem():
    kind = random.choice(["RSA PRIVATE KEY", "PRIVATE KEY", "EC PRIVATE KEY", "OPENSSH PRIVATE KEY", "ENCRYPTED PRIVATE KEY"])
    body = base64.b64encode(bytes(random.getrandbits(8) for _ in range(random.randint(120, 700)))).decode()
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return "-----BEGIN %s-----\n%s\n-----END %s-----" % (kind, "\n".join(lines), kind)


GENERATORS = {
    "email": lambda: random.choice([fake.email, fake.free_email, fake.company_email, fake.safe_email])(),
    "phone": lambda: fake.phone_number(),
    "card": card,
    "ssn": lambda: fake.ssn(),
    "iban": iban,
    "jwt": jwt,
    "pem_private_key": pem,
    "aws_access_key": lambda: random.choice(["AKIA", "ASIA"]) + rand(string.ascii_uppercase + "234567", 16),
    "github_token": lambda: random.choice(
        [random.choice(["ghp_", "gho_", "ghu_", "ghs_", "ghr_"]) + mixed(36), "github_pat_" + mixed(22) + "_" + mixed(59)]
    ),
    "openai_key": lambda: random.choice(["sk-proj-", "sk-", "sk-svcacct-"]) + mixed(random.choice([48, 64, 100])),
    "anthropic_key": lambda: "sk-ant-api03-" + rand(B64URL, 93) + "AA",
    "slack_token": lambda: random.choice(["xoxb-", "xoxp-", "xoxa-"]) + "%d-%d-%s" % (
        random.randint(10**10, 10**12), random.randint(10**10, 10**12), mixed(24)),
    "google_api_key": lambda: "AIza" + rand(ALNUM + "-_", 35),
}


def credential_line():
    # The credential after a keyword; the label is the value alone.
    if random.random() < 0.5:
        pw = fake.password(length=random.randint(8, 20), special_chars=random.random() < 0.5)
        kw = random.choice(["password", "PASSWORD", "db_password", "passwd", "pwd", "secret", "api_key", "apiKey"])
        form = random.choice(["{k}={v}", "{k}: {v}", '"{k}": "{v}"', "{k} = {v}"])
        return form.format(k=kw, v=pw), "password", pw
    tok = mixed(random.randint(20, 60))
    form = random.choice(["Authorization: Bearer {v}", "bearer {v}", "curl -H 'Authorization: Bearer {v}' https://api"])
    return form.format(v=tok), "bearer", tok


def lookalike():
    kind = random.choice([
        "uuid", "trace", "span", "sha", "short_sha", "iso", "iso_space", "epoch_s", "epoch_ms", "epoch_us",
        "epoch_ns", "semver", "version4", "order", "order_hash", "amazon", "invoice", "po", "amount", "ipv4",
        "duration", "pod", "date", "port", "hex_color", "zip", "count",
    ])
    if kind == "uuid":
        v = str(uuid.UUID(int=random.getrandbits(128), version=4))
    elif kind == "trace":
        v = "%032x" % random.getrandbits(128)
    elif kind == "span":
        v = "%016x" % random.getrandbits(64)
    elif kind == "sha":
        v = "%040x" % random.getrandbits(160)
    elif kind == "short_sha":
        v = "%07x" % random.getrandbits(28)
    elif kind == "iso":
        v = fake.date_time_between(datetime(2021, 1, 1), datetime(2027, 1, 1)).isoformat() + random.choice(["Z", ".%06dZ" % random.randint(0, 999999), "+02:00"])
    elif kind == "iso_space":
        v = fake.date_time_between(datetime(2021, 1, 1), datetime(2027, 1, 1)).strftime("%Y-%m-%d %H:%M:%S")
    elif kind == "epoch_s":
        v = str(random.randint(1_500_000_000, 1_900_000_000))
    elif kind == "epoch_ms":
        v = str(random.randint(1_500_000_000_000, 1_900_000_000_000))
    elif kind == "epoch_us":
        v = str(random.randint(1_500_000_000_000_000, 1_900_000_000_000_000))
    elif kind == "epoch_ns":
        v = str(random.randint(1_500_000_000_000_000_000, 1_900_000_000_000_000_000))
    elif kind == "semver":
        v = "%d.%d.%d" % (random.randint(0, 30), random.randint(0, 99), random.randint(0, 999))
        if random.random() < 0.3:
            v += random.choice(["-rc.1", "-beta.2", "+build.%d" % random.randint(1, 99999)])
    elif kind == "version4":
        v = "%d.%d.%d.%d" % (random.randint(1, 20), random.randint(0, 9), random.randint(10000, 30000), random.randint(1, 9999))
    elif kind == "order":
        v = "ORD-%d-%06d" % (random.randint(2019, 2027), random.randint(0, 999999))
    elif kind == "order_hash":
        v = "#%d" % random.randint(10**6, 10**10)
    elif kind == "amazon":
        v = "%03d-%07d-%07d" % (random.randint(100, 999), random.randint(0, 9999999), random.randint(0, 9999999))
    elif kind == "invoice":
        v = "INV-%d%02d-%05d" % (random.randint(2019, 2027), random.randint(1, 12), random.randint(0, 99999))
    elif kind == "po":
        v = "PO %d" % random.randint(4500000000, 4599999999)
    elif kind == "amount":
        v = "$%s" % format(random.randint(0, 10**9) / 100, ",.2f")
    elif kind == "ipv4":
        v = fake.ipv4()
    elif kind == "duration":
        v = "%dms" % random.randint(0, 10**7)
    elif kind == "pod":
        v = "worker-%s-%s" % ("%010x" % random.getrandbits(40), rand(string.ascii_lowercase + string.digits, 5))
    elif kind == "date":
        v = fake.date_between(datetime(2000, 1, 1), datetime(2026, 12, 1)).strftime(random.choice(["%d/%m/%Y", "%m-%d-%Y", "%Y%m%d"]))
    elif kind == "port":
        v = "127.0.0.1:%d" % random.randint(1024, 65535)
    elif kind == "hex_color":
        v = "#%06x" % random.getrandbits(24)
    elif kind == "zip":
        v = fake.zipcode_plus4()
    else:
        v = "%d items, %d retries, %d bytes" % (random.randint(0, 10**4), random.randint(0, 9), random.randint(0, 10**9))
    return sentence(v), kind


def main():
    out = []
    for det, gen in GENERATORS.items():
        for _ in range(N):
            v = gen()
            out.append({"text": sentence(v), "labels": [{"detector": det, "value": v}]})
    for _ in range(N):
        text, det, v = credential_line()
        out.append({"text": text, "labels": [{"detector": det, "value": v}]})
    # Mixed lines: several values of different kinds in one text.
    kinds = list(GENERATORS)
    for _ in range(N):
        picked = random.sample(kinds, 3)
        vals = [(k, GENERATORS[k]()) for k in picked]
        text = " | ".join("%s: %s" % (k.upper(), v) for k, v in vals)
        out.append({"text": text, "labels": [{"detector": k, "value": v} for k, v in vals]})
    for _ in range(N_LOOKALIKE):
        text, kind = lookalike()
        out.append({"text": text, "labels": [], "lookalike": True, "kind": kind})
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus.jsonl")
    with open(path, "w") as f:
        for o in out:
            f.write(json.dumps(o, sort_keys=True) + "\n")
    print("wrote %d lines to %s" % (len(out), path))


if __name__ == "__main__":
    main()
