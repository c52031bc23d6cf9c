"""Starting and following the migration's Dagster runs: nothing here is a migration step.

Every step that changes or judges the target lives in the asset graph (`defs/`), so the UI,
`migrate` and `migrate --submit` do the same work. This package only decides which runs of
that graph are due, executes them locally (`local`) or launches them through the webserver
for the instance's run queue and launcher (`submit`), and reports progress.
"""
