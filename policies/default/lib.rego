# Helpers for the kla default pack (Rego v1).
package kla.default

recipients contains r if {
	some r in input.context.to
}

recipients contains r if {
	r := input.context.to
	is_string(r)
}

domain(addr) := lower(parts[count(parts) - 1]) if {
	parts := split(addr, "@")
}

external_recipient if {
	some r in recipients
	domain(r) != domain(input.context.from)
}

# A failing builtin makes an expression undefined (OPA semantics), so guard explicitly:
# an amount that is missing, null or not a number counts as over any limit.
valid_amount if {
	input.context.amount != null
	is_number(to_number(input.context.amount))
}

amount_over(limit) if to_number(input.context.amount) > limit

amount_over(_) if not valid_amount
