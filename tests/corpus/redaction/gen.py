"""Generates kla's labelled redaction corpus (corpus.jsonl beside this file).

    python3 tests/corpus/redaction/gen.py      # with Faker as pinned in tests/py/requirements.txt

Each line is {"text": ..., "labels": [{"detector": ..., "value": ...}]}: a sentence holding planted values, each
labelled with the detector that must find it. Lines with "lookalike": true hold only values that must stay
untouched (UUIDs, trace and span ids, git SHAs, timestamps, version numbers, order numbers, amounts, IPv4
addresses, which are off by default). The Rust test tests/it/redaction.rs reads the file. Personal data comes
from Faker; secret formats (keys, tokens, JWTs, PEM blocks) are built here from random characters, in the vendors'
published shapes. Deterministic: fixed seed and fixed date ranges, so a re-run rewrites the same file.

After those, the evasion forms: lines with a "form" name the spelling a detector must see through (separators,
full-width or other scripts' digits, identifier-like prefixes, IDN and quoted addresses, secret shapes without a
prefix), N_FORM of each; and the look-alikes of those forms, which must stay untouched. They are generated after the
first part from the same random stream, so the first part of the file does not change when forms are added.
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


# ---------------------------------------------------------------------------------------------------------------
# Evasion forms and their look-alikes.

N_FORM = 60  # labelled lines per evasion form
N_FORM_LOOKALIKE = 150  # look-alike lines per kind

intl = {loc: Faker(loc) for loc in ["ru_RU", "el_GR", "ja_JP", "zh_CN", "de_DE"]}
for i, f in enumerate(intl.values()):
    f.seed_instance(SEED + 100 + i)

FULLWIDTH = {c: chr(ord(c) + 0xFEE0) for c in map(chr, range(0x21, 0x7F))}
ARABIC_INDIC = {str(d): chr(0x660 + d) for d in range(10)}
DEVANAGARI = {str(d): chr(0x966 + d) for d in range(10)}


def translate(s, table):
    return "".join(table.get(c, c) for c in s)


def card16():
    return fake.credit_card_number(card_type=random.choice(["visa16", "mastercard", "discover", "jcb16"]))


def in_sentence(v):
    return random.choice(["{v}", "paid with {v} today", "value={v}", "the customer said: {v}.", "[{v}]"]).format(v=v)


def idn_domain():
    loc = random.choice(["ru_RU", "el_GR", "ja_JP", "zh_CN", "de_DE"])
    word = intl[loc].word().replace(" ", "").lower()
    tld = {"ru_RU": ["рф", "ru", "com"], "el_GR": ["ελ", "gr"], "ja_JP": ["jp", "com"], "zh_CN": ["中国", "cn"],
           "de_DE": ["de", "at"]}[loc]
    return "%s.%s" % (word, random.choice(tld))


def aws_secret():
    while True:
        s = rand(ALNUM + "/+", 40)
        if any(c.isupper() for c in s) and any(c.islower() for c in s) and any(c.isdigit() or c in "/+" for c in s):
            return s


def aws_id():
    return random.choice(["AKIA", "ASIA"]) + rand(string.ascii_uppercase + "234567", 16)


def jwt_spaced():
    header = {"alg": random.choice(["HS256", "RS256", "ES256", "none"]), "typ": "JWT"}
    style = random.choice(["space", "indent", "crlf", "tab"])
    if style == "space":
        h = "{ " + json.dumps(header)[1:-1] + " }"
    elif style == "indent":
        h = json.dumps(header, indent=2)
    elif style == "crlf":
        h = json.dumps(header, indent=1).replace("\n", "\r\n")
    else:
        h = "{\t" + json.dumps(header)[1:]
    payload = {"sub": str(fake.random_int(1, 10**6)), "name": fake.name()}
    sig = b64url(bytes(random.getrandbits(8) for _ in range(32)))
    return ".".join([b64url(h.encode()), b64url(json.dumps(payload).encode()), sig])


def pgp_block(cut=False):
    body = base64.b64encode(bytes(random.getrandbits(8) for _ in range(random.randint(200, 900)))).decode()
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    head = "-----BEGIN PGP PRIVATE KEY BLOCK-----\n"
    if random.random() < 0.6:
        head += "Version: GnuPG v%d\n" % random.randint(1, 2)
    if random.random() < 0.4:
        head += "Comment: %s\n" % fake.sentence(nb_words=3)
    text = head + "\n" + "\n".join(lines) + "\n=" + rand(ALNUM, 4)
    return text if cut else text + "\n-----END PGP PRIVATE KEY BLOCK-----"


def iban_form(form):
    v = random.choice(list(eu.values())).iban()
    if form == "lower":
        return v.lower()
    if form == "lower_spaced":
        return group(v.lower(), [4] * 9, " ")
    if form == "dashes":
        return group(v, [4] * 9, "-")
    return group(v, [4] * 9, "\u00a0")  # nbsp


def bare_ssn():
    return fake.ssn().replace("-", "")


# form name -> (detector, generator of (text, [(detector, value)]))
FORMS = {
    "card_dot": ("card", lambda: group(card16(), [4] * 4, ".")),
    "card_tab": ("card", lambda: group(card16(), [4] * 4, "\t")),
    "card_nbsp": ("card", lambda: group(card16(), [4] * 4, random.choice(["\u00a0", "\u202f", "\u2009"]))),
    "card_en_dash": ("card", lambda: group(card16(), [4] * 4, random.choice(["\u2013", "\u2212", "\u2010"]))),
    "card_double_space": ("card", lambda: group(card16(), [4] * 4, "  ")),
    "card_spaced_dash": ("card", lambda: group(card16(), [4] * 4, " - ")),
    "card_fullwidth": ("card", lambda: translate(random.choice([card16(), group(card16(), [4] * 4, " ")]), FULLWIDTH)),
    "card_other_script": ("card", lambda: translate(card16(), random.choice([ARABIC_INDIC, DEVANAGARI]))),
    "card_zero_width": ("card", lambda: group(card16(), [4] * 4, random.choice(["\u200b", "\u200d", "\u00ad"]))),
    "card_prefix_cc": ("card", lambda: (card16(), "cc_{v}")),
    "card_prefix_ref": ("card", lambda: (card16(), "ref#{v}")),
    "card_url_path": ("card", lambda: (card16(), "GET https://api.example.com/v1/cards/{v}/charges")),
    "card_after_non_ascii": ("card", lambda: (card16(), random.choice(["番号{v}", "номер{v}", "Karte→{v}", "carte n°{v}"]))),
    "card_after_letter": ("card", lambda: (card16(), random.choice(["a{v}", "ORD-{v}", "card{v}"]))),
    "ssn_dotted": ("ssn", lambda: fake.ssn().replace("-", ".")),
    "ssn_fullwidth": ("ssn", lambda: translate(fake.ssn(), FULLWIDTH)),
    "ssn_bare_keyword": ("ssn", lambda: (bare_ssn(), random.choice(
        ["SSN: {v}", "ssn={v}", "user_ssn {v}", "customerSsn={v}", "social security number {v}", "SSN#{v}"]))),
    "ssn_fullwidth_bare": ("ssn", lambda: (translate(bare_ssn(), FULLWIDTH), random.choice(["ＳＳＮ：{v}", "SSN {v}"]))),
    "ssn_prefix": ("ssn", lambda: (fake.ssn(), random.choice(["cc_{v}", "ref#{v}", "/people/{v}", "社会保障番号{v}"]))),
    "email_fullwidth_at": ("email", lambda: fake.email().replace("@", random.choice(["＠", "﹫"]))),
    "email_fullwidth": ("email", lambda: translate(fake.email(), FULLWIDTH)),
    "email_idn": ("email", lambda: "%s@%s" % (fake.user_name(), idn_domain())),
    "email_punycode": ("email", lambda: "%s@%s" % (fake.user_name(), idn_domain().encode("idna").decode())),
    "email_quoted": ("email", lambda: '"%s%s%s"@%s' % (fake.first_name(), random.choice([" ", "..", " (x) "]),
                                                        fake.last_name(), fake.domain_name())),
    "aws_secret_kv": ("aws_secret_key", lambda: (aws_secret(), random.choice(
        ["aws_secret_access_key = {v}", "AWS_SECRET_ACCESS_KEY={v}", 'export AWS_SECRET_ACCESS_KEY="{v}"',
         'response {{"SecretAccessKey": "{v}", "Expiration": "2026-12-02"}} tail', "secret key: {v}"]))),
    "jwt_spaced_header": ("jwt", jwt_spaced),
    "pgp_private_key": ("pem_private_key", lambda: pgp_block(cut=random.random() < 0.2)),
    "iban_lower": ("iban", lambda: iban_form("lower")),
    "iban_lower_spaced": ("iban", lambda: iban_form("lower_spaced")),
    "iban_dashes": ("iban", lambda: iban_form("dashes")),
    "iban_nbsp": ("iban", lambda: iban_form("nbsp")),
}


def form_line(name):
    det, gen = FORMS[name]
    g = gen()
    v, template = g if isinstance(g, tuple) else (g, None)
    text = template.format(v=v) if template else in_sentence(v)
    return {"text": text, "labels": [{"detector": det, "value": v}], "form": name}


def aws_pair_lines():
    # Two shapes whose evidence is the access key id: a credentials file and a bare pair.
    out = []
    for _ in range(N_FORM):
        i, s = aws_id(), aws_secret()
        text = "[%s]\naws_access_key_id = %s\naws_secret_access_key = %s\nregion = us-east-1\n" % (
            random.choice(["default", "prod", "ci"]), i, s)
        out.append({"text": text, "labels": [{"detector": "aws_access_key", "value": i},
                                             {"detector": "aws_secret_key", "value": s}], "form": "aws_credentials_file"})
    for _ in range(N_FORM):
        i, s = aws_id(), aws_secret()
        text = random.choice(["creds {i} {s}", "{i}:{s}", "keys: {s} / {i}"]).format(i=i, s=s)
        out.append({"text": text, "labels": [{"detector": "aws_access_key", "value": i},
                                             {"detector": "aws_secret_key", "value": s}], "form": "aws_secret_bare_pair"})
    return out


def luhn_ok(digits):
    total = 0
    for i, d in enumerate(reversed(digits)):
        v = int(d)
        if i % 2 == 1:
            v *= 2
            if v > 9:
                v -= 9
        total += v
    return total % 10 == 0


def iban_ok(s):
    t = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in t)) % 97 == 1


def form_lookalike():
    kind = random.choice([
        "bare_nine_digits", "nine_digits_after_word", "b64_40_no_evidence", "hex40_near_secret", "card_in_hex_id",
        "card_in_uuid", "long_dotted_version", "lower_span_id_like_iban", "json_at_handle", "cjk_fullwidth",
        "fr_amount_nbsp", "ewo_words", "fullwidth_date",
    ])
    if kind == "bare_nine_digits":
        v = random.choice(["uploaded %d bytes", "order %d shipped", "count=%d", "took %d ns"]) % random.randint(10**8, 10**9 - 1)
    elif kind == "nine_digits_after_word":
        v = random.choice(["classname %d", "lessons %d", "assigned %d", "session %d"]) % random.randint(10**8, 10**9 - 1)
    elif kind == "b64_40_no_evidence":
        v = random.choice(["object {t} stored", "etag {t}", "cursor={t}", "sig {t} ok"]).format(t=aws_secret())
    elif kind == "hex40_near_secret":
        v = "the secret sauce is in commit %040x" % random.getrandbits(160)
    elif kind == "card_in_hex_id":
        pan = card16()
        filler = "%016x" % random.getrandbits(64)
        while not any(c in "abcdef" for c in filler):
            filler = "%016x" % random.getrandbits(64)
        v = "trace_id=%s" % (pan + filler if random.random() < 0.5 else filler + pan)
    elif kind == "card_in_uuid":
        u = str(uuid.UUID(int=random.getrandbits(128), version=4))
        v = "request %s done" % u
    elif kind == "long_dotted_version":
        a, b, c = fake.ssn().split("-")
        v = random.choice(["v1.{a}.{b}.{c}", "{a}.{b}.{c}.7", "build 2.{a}.{b}.{c}"]).format(a=a, b=b, c=c)
    elif kind == "lower_span_id_like_iban":
        # Belgium's IBAN is 16 characters of hex digits: as a lower-case span id it is an id.
        while True:
            s = "BE%02d%012d" % (random.randint(2, 98), random.randint(0, 10**12 - 1))
            if iban_ok(s):
                break
        v = "span_id=%s" % s.lower()
    elif kind == "json_at_handle":
        v = random.choice(['log "user":"@%s.%s" sent', 'handles "a" "@%s.%s"', "@%s.%s mentioned"]) % (
            fake.user_name(), random.choice(["io", "dev", "com"]))
    elif kind == "cjk_fullwidth":
        f = intl[random.choice(["ja_JP", "zh_CN"])]
        v = "%s 订单号：%s，金额：￥%s。" % (f.sentence(), translate("%d-%06d" % (random.randint(2019, 2027), random.randint(0, 999999)), FULLWIDTH),
                                 translate(format(random.randint(100, 10**7), ","), FULLWIDTH))
    elif kind == "fr_amount_nbsp":
        v = "total %s €" % format(random.randint(10**3, 10**12), ",").replace(",", random.choice(["\u00a0", "\u202f"]))
    elif kind == "ewo_words":
        v = random.choice(["the framework and the homework", "a firework show", "eyAlign=center", "ewok village"])
    else:
        d = fake.date_between(datetime(2000, 1, 1), datetime(2026, 12, 1))
        v = translate(d.strftime(random.choice(["%Y-%m-%d", "%Y/%m/%d %H:%M"])), FULLWIDTH)
    return {"text": v, "labels": [], "lookalike": True, "kind": kind}


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
    for name in FORMS:
        for _ in range(N_FORM):
            out.append(form_line(name))
    out.extend(aws_pair_lines())
    for _ in range(N_FORM_LOOKALIKE * 13):
        out.append(form_lookalike())
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus.jsonl")
    with open(path, "w") as f:
        for o in out:
            f.write(json.dumps(o, sort_keys=True) + "\n")
    print("wrote %d lines to %s" % (len(out), path))


if __name__ == "__main__":
    main()
