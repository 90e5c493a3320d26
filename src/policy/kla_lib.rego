# kla's Rego library, compiled into every pack as package kla_lib (reserved).
# `when` expressions call it as kla_lib.<name>(...); a pack's .rego module imports data.kla_lib.
#
# Each function is *defined only on a well-typed value* and undefined otherwise: it never
# converts ("5000" is not a number, "a@b.c" is not a list). An undefined value makes the
# expression using it not hold, so a rule that compares a typed value must be paired with a
# guard rule `not kla_lib.<name>(...)` that has a restrictive decision (see
# docs/policy-packs.md, "kla's Rego library"). Semantics are stable across kla versions;
# functions are only ever added.
package kla_lib

# obj is an object holding key, whatever the value (null and false included).
has(obj, key) if {
	is_object(obj)
	_ = obj[key]
}

# x, when x is a string.
string(x) := x if is_string(x)

# x, when x is a number. A boolean, a numeric string or null is not a number. Every number is
# finite: JSON has no NaN or infinity, regorus stores one as null, and Rego arithmetic that
# overflows is an evaluation error (the decision fails closed).
number(x) := x if is_number(x)

# x, when x is a finite number >= 0.
nonneg_number(x) := x if {
	number(x)
	x >= 0
}

# x, when x is an array whose elements are all strings (the empty array included). A single
# string is not a list of strings.
string_list(x) := x if {
	is_array(x)
	every e in x {
		is_string(e)
	}
}

# The domain of a bare email address, lowercased. Defined only for a string local@domain with
# exactly one "@", a local part without spaces, ASCII control characters or <>,;" and a domain
# of dot-separated labels of ASCII letters, digits and hyphens (no trailing dot; an
# internationalised domain is written in its xn-- form). "Name <a@b.c>", "a@b.c, d@e.f" and
# "a@b@c" are not addresses.
email_domain(addr) := lower(parts[1]) if {
	is_string(addr)
	regex.match(`^[^@<>,;"\x00-\x20\x7f]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*$`, addr)
	parts := split(addr, "@")
}

# The set of all recipients of a message object: the addresses in msg.to, msg.cc and
# msg.bcc. Defined only when msg is an object and each of the three is absent or a list of
# addresses that email_domain accepts; one field that is a string, null, an object or a list
# holding anything else makes it undefined. The set may be empty (no recipients at all).
email_recipients(msg) := {r |
	some f in ["to", "cc", "bcc"]
	some r in object.get(msg, f, [])
} if {
	is_object(msg)
	every f in ["to", "cc", "bcc"] {
		address_field_ok(msg, f)
	}
}

# (Internal to email_recipients.)
address_field_ok(msg, f) if not has(msg, f)

address_field_ok(msg, f) if {
	string_list(msg[f])
	every a in msg[f] {
		email_domain(a)
	}
}
