# Helpers for the kla default pack (Rego v1), built on kla's typed library (data.kla_lib):
# every value a rule depends on is checked for its type, and a wrong one is a reason of its own
# (INVALID_AMOUNT, INVALID_EMAIL_FIELDS, INVALID_BUDGET) instead of a rule that silently does
# not match.
package kla.default

import data.kla_lib

# ----- payments: input.context.amount -------------------------------------------------------

# An amount that is absent counts as over any limit (unknown amount: a human decides).
amount_over(limit) if kla_lib.nonneg_number(input.context.amount) > limit

amount_over(_) if not kla_lib.has(input.context, "amount")

# An amount that is given must be a JSON number >= 0: a string ("5000"), a boolean, null, an
# object, a list or a negative number is refused.
invalid_amount if {
	kla_lib.has(input.context, "amount")
	not kla_lib.nonneg_number(input.context.amount)
}

# ----- outbound email: input.context.from, to, cc, bcc ----------------------------------------

sender_domain := kla_lib.email_domain(input.context.from)

recipients := kla_lib.email_recipients(input.context)

# A recipient in to, cc or bcc outside the sender's domain (domains compared lowercased).
external_recipient if {
	some r in recipients
	kla_lib.email_domain(r) != sender_domain
}

# The sender must be one address (a string); to, cc and bcc, where given, lists of addresses;
# and there must be at least one recipient. Anything else cannot be checked for external
# recipients.
invalid_email if not sender_domain

invalid_email if not recipients

invalid_email if count(recipients) == 0

# ----- execution budgets: input.execution.<counter> against input.execution.<limit> ----------

over_budget(counter, limit) if {
	kla_lib.nonneg_number(input.execution[counter]) > kla_lib.nonneg_number(input.execution[limit])
}

# A limit that is absent is not enforced; one that is given, and its counter, must be numbers
# >= 0 (a counter that is missing cannot be compared with its limit).
invalid_budget(counter, limit) if {
	kla_lib.has(input.execution, limit)
	not valid_budget(counter, limit)
}

valid_budget(counter, limit) if {
	kla_lib.nonneg_number(input.execution[counter])
	kla_lib.nonneg_number(input.execution[limit])
}

invalid_any_budget if invalid_budget("steps", "maxSteps")

invalid_any_budget if invalid_budget("cost", "maxCost")
