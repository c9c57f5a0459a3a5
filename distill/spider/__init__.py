"""Spider (Yu et al., 2018) as the project's real text-to-SQL task: its dev questions, schemas and own evaluator."""
