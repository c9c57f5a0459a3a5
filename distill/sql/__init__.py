"""Execution-labelled text-to-SQL data: candidate prompts, SQL extraction, rule-based mutations, a read-only sandbox,
labelling against the gold query, and the Hub round trip."""
