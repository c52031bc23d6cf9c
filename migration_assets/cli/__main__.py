from migration_assets.cli import run

run()
