"""The audit report as an auditor meets it: a first page, numbers to recompute, a keyed and
anchored chain.

One migrated pair serves the whole module (a migration is the slow part); each test writes
its reports into a directory of its own, so every chain here is separate.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest

from migration_assets.db.schema import _tool
from migration_assets.db.session import SESSION_PINS, connect
from migration_assets.db.state import drop_if_empty
from migration_assets.devstack.cluster import free_port
from migration_assets.devstack.stack import DevStack
from migration_assets.report import check_chain, compare_anchor, prepare_report, report_key
from migration_assets.settings import SETTING_NAMES
from migration_assets_tests.conftest import Databases, Migration, _through_pooler, unique
from migration_assets_tests.helpers import plan_and_migrate, run_cli

pytestmark = pytest.mark.integration

FOOTER = "\n\n---\ndigest "


@pytest.fixture(scope="module")
def pair(
    databases: Databases, stack: DevStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Migration]:
    """A seeded source migrated once (`migrate` wrote report #1 into $DAGSTER_HOME/audit)."""
    with pytest.MonkeyPatch.context() as mp:
        cwd = tmp_path_factory.mktemp("report_chain")
        mp.chdir(cwd)
        for name in SETTING_NAMES:
            mp.delenv(name, raising=False)
        home = cwd / unique("dagster_home")
        home.mkdir()
        target = databases.target()
        m = Migration(
            source_url=databases.source(),
            target_url=target,
            plan_path=cwd / "plan.json",
            dagster_home=home,
            ca_file=stack.ca_file,
            pooler_url=_through_pooler(stack, target),
        )
        for key, value in m.env().items():
            mp.setenv(key, value)
        plan_and_migrate(m.plan_path, workers=1)
        yield m


def _write(directory: Path, count: int = 1) -> None:
    for _ in range(count):
        code, output = run_cli(["report", "--out", str(directory)])
        assert "written" in output, output
        assert code in (0, 1), output  # complete or not: written either way


def _load(path: Path) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(path.read_text())
    return report


def _check(directory: Path, *extra: str) -> tuple[int, str]:
    return run_cli(["report", "--check", str(directory), *extra])


def test_the_report_after_migrate_reads_as_a_first_page_with_its_problems_grouped(
    pair: Migration,
) -> None:
    """Right after `migrate` every whole-table check waits for `verify`: one group with the
    command that clears it, not one line per check; the JSON keeps every line."""
    audit = pair.dagster_home / "audit"
    report = _load(audit / "audit-0001.json")
    markdown = (audit / "audit-0001.md").read_text()
    first_page = markdown.split("\n# Details\n", 1)[0]
    assert first_page != markdown, "the details follow a first page"
    problems = report["verdict"]["problems"]
    tables = report["tables"]
    assert problems
    assert all(p.endswith("not run since its asset last changed") for p in problems)
    group = f"{len(problems)} checks not run since their asset last changed ({len(tables)} tables)"
    assert f"INCOMPLETE: {group}\n" in first_page
    fix = f"run `migration-assets verify`, then `migration-assets report --out {audit}`"
    assert f"- **{group}**: {fix}" in first_page
    assert markdown.count("not run since") == 2, "each stale check listed one by one"
    by = report["generated_by"]
    rows = sum(t["rows_verified"] for t in tables)
    assert f"| By | {by['os_user']}@{by['host']}, migration_assets " in first_page
    assert f"| When | {report['generated_at']} |" in first_page
    assert f"| Scope | {len(tables)} tables; {rows:,} rows in " in first_page
    assert "- public.alembic_version: owned by the schema step" in first_page
    config = report["configuration"]
    assert "***" in config["SUPABASE_DB_URL"]
    assert f"| Source | {config['SOURCE_DATABASE_URL']} |" in first_page
    assert f"| Target | {config['SUPABASE_DB_URL']} |" in first_page
    tls = next(c for c in report["global_checks"] if c["name"] == "tls_in_use")["metadata"]
    assert f"| TLS to the target | {tls['protocol']} {tls['cipher']} |" in first_page
    assert tls["protocol"].startswith("TLSv1.")
    source_tls = (
        f"{tls['source_protocol']} {tls.get('source_cipher', '')}".strip()
        if tls.get("source_protocol") not in (None, "none")
        else ("not encrypted" if tls.get("source_protocol") == "none" else "not recorded")
    )
    assert f"| TLS to the source | {source_tls} |" in first_page
    chain = f"| Chain | report #1 of chain {report['chain']}; previous digest none (first report)"
    assert chain in first_page
    assert "anchored: the target (" in first_page
    assert "the Dagster instance (metadata of the asset migration_audit_report)" in first_page


def test_report_chain_detects_tampering(pair: Migration, tmp_path: Path) -> None:
    """What the chain detected before it was keyed, it still detects."""
    assert run_cli(["verify"])[0] == 0
    out = tmp_path / "audit"
    for _ in range(2):
        code, output = run_cli(["report", "--out", str(out)])
        assert code == 0, output
        assert "COMPLETE" in output
    first = json.loads((out / "audit-0001.json").read_text())
    assert first["verdict"]["complete"] is True
    assert first["tls"]["protocol"].startswith("TLSv1.")
    assert first["alembic"]["source"] == first["alembic"]["target"] != "unknown"
    assert all(t["partitions"]["verified"] == t["partitions"]["total"] for t in first["tables"])
    assert "***" in first["configuration"]["SUPABASE_DB_URL"]
    assert first["generated_by"]["os_user"]
    # what the plan leaves out is in the record, with its reason
    assert first["plan"]["not_copied"]["public.alembic_version"] == "owned by the schema step"
    assert (
        "- public.alembic_version: owned by the schema step" in (out / "audit-0001.md").read_text()
    )
    assert run_cli(["report", "--check", str(out)])[0] == 0
    original = (out / "audit-0001.json").read_text()
    (out / "audit-0001.json").write_text(
        original.replace('"verified": true', '"verified": false', 1)
    )
    code, output = run_cli(["report", "--check", str(out)])
    assert code == 1
    assert "audit-0001.json" in output
    (out / "audit-0001.json").write_text(original)
    markdown = (out / "audit-0002.md").read_text()
    (out / "audit-0002.md").write_text(markdown.replace("PASS", "FAIL", 1))
    code, output = run_cli(["report", "--check", str(out)])
    assert code == 1
    assert "audit-0002.md" in output
    (out / "audit-0002.md").write_text(markdown)
    assert run_cli(["report", "--check", str(out)])[0] == 0
    (out / "audit-0001.json").unlink()
    assert run_cli(["report", "--check", str(out)])[0] == 1


def _psql(url: str, script: str, scratch: Path, ca_file: Path) -> tuple[int, str]:
    """The script run as the Markdown says: psql alone, its output `rows|checksum`."""
    path = scratch / "table.sql"
    path.write_text(script)
    psql = _tool("psql", None, at_least=15)
    proc = subprocess.run(
        [psql, url, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-f", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env={**os.environ, "PGSSLROOTCERT": str(ca_file)},
    )
    assert proc.returncode == 0, proc.stderr
    rows, checksum = proc.stdout.strip().split("|")
    return int(rows), checksum


def _assert_recomputed(pair: Migration, report: dict[str, Any], scratch: Path) -> None:
    urls = {"source": pair.source_url, "target": pair.target_url}
    for table in report["tables"]:
        numbers = table["numbers"]
        assert numbers is not None, table["table"]
        for side, url in urls.items():
            got = _psql(url, table["recompute"][side], scratch, pair.ca_file)
            want = (int(numbers[side]["rows"]), str(numbers[side]["checksum"]))
            assert got == want, f"{table['table']} on the {side}: {got} != {want}"


def test_every_number_of_the_report_is_recomputed_by_its_sql_with_psql_alone(
    pair: Migration, tmp_path: Path
) -> None:
    """Each table's SQL, run with psql on each server, gives exactly the report's numbers:
    after `migrate` (the slices' sums) and after `verify` (the whole-table checks')."""
    after_migrate = _load(pair.dagster_home / "audit" / "audit-0001.json")
    assert {t["numbers"]["from"] for t in after_migrate["tables"]} == {
        "the sum of its slices, each verified when it was copied"
    }
    _assert_recomputed(pair, after_migrate, tmp_path)
    code, output = run_cli(["verify"])
    assert code == 0, output
    out = tmp_path / "numbers"
    _write(out)
    report = _load(out / "audit-0001.json")
    for table in report["tables"]:
        checks = {c["name"]: c["metadata"] for c in table["checks"]}
        numbers = table["numbers"]
        assert numbers["from"].startswith("check table_checksum at ")
        assert numbers["target"]["checksum"] == checks["table_checksum"]["target_checksum"]
        assert numbers["source"]["rows"] == checks["table_row_count"]["source_rows"]
        for name in SESSION_PINS:  # the session pins first, as every session of ours
            assert f"\nSET {name} TO " in table["recompute"]["target"]
    assert {t["numbers"]["row_hash"] for t in report["tables"]} == {"native"}
    _assert_recomputed(pair, report, tmp_path)
    markdown = (out / "audit-0001.md").read_text()
    assert 'psql "$SOURCE_DATABASE_URL" -X -q -A -t -v ON_ERROR_STOP=1 -f' in markdown
    assert 'psql "$SUPABASE_DB_URL" -X -q -A -t -v ON_ERROR_STOP=1 -f' in markdown
    for table in report["tables"]:
        assert f"```sql\n{table['recompute']['source']}\n```" in markdown


def _rehash_without_the_key(directory: Path) -> None:
    """What someone who can write the directory, but holds no key, does: change a report
    and re-hash every one consistently, as a plain SHA-256 chain allows."""
    previous = None
    for path in sorted(directory.glob("audit-*.json")):
        report = _load(path)
        md_path = path.with_suffix(".md")
        body = md_path.read_text().rsplit(FOOTER, 1)[0].replace("PASS", "FAIL")
        report["generated_by"]["os_user"] = "someone-else"
        report["markdown_sha256"] = hashlib.sha256(body.encode()).hexdigest()
        report["previous_digest"] = previous
        unsigned = {k: v for k, v in report.items() if k != "digest"}
        canonical = json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        report["digest"] = "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
        path.write_text(json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
        md_path.write_text(body + FOOTER + f"`{report['digest']}`\n")
        previous = report["digest"]


def test_a_chain_rewritten_without_the_key_is_refused(pair: Migration, tmp_path: Path) -> None:
    out = tmp_path / "audit"
    _write(out, 2)
    assert _check(out)[0] == 0
    _rehash_without_the_key(out)
    code, output = _check(out)
    assert code == 1, output
    assert "audit-0001.json: content does not match its keyed digest" in output
    assert "audit-0002.json: content does not match its keyed digest" in output


def test_a_deleted_newest_report_is_named_by_both_anchors(pair: Migration, tmp_path: Path) -> None:
    out = tmp_path / "audit"
    _write(out, 3)
    assert _check(out)[0] == 0
    newest = {p: p.read_bytes() for p in (out / "audit-0003.json", out / "audit-0003.md")}
    digest = _load(out / "audit-0003.json")["digest"]
    for path in newest:
        path.unlink()
    code, output = _check(out)
    assert code == 1, output
    deleted = (
        f"anchors report #3 ({digest}), newer than the directory's newest (#2): it was deleted"
    )
    assert "the target (postgresql://" in output
    assert output.count(deleted) == 2, output  # the target's and the Dagster instance's
    # the next report would take the deleted one's number: refused, nothing written
    code, output = run_cli(["report", "--out", str(out)])
    assert code == 1, output
    assert "the target already anchors report #3 of this chain" in output
    assert not (out / "audit-0003.json").exists()
    for path, content in newest.items():
        path.write_bytes(content)
    assert _check(out)[0] == 0


def test_check_says_which_anchors_it_checked_and_fails_when_one_disagrees(
    pair: Migration, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "audit"
    _write(out, 2)
    newest = _load(out / "audit-0002.json")
    assert oct(out.stat().st_mode & 0o777) == "0o700"
    assert {oct(p.stat().st_mode & 0o777) for p in out.iterdir()} == {"0o600"}
    instance = dg.DagsterInstance.from_config(str(pair.dagster_home))
    event = instance.get_latest_materialization_event(dg.AssetKey("migration_audit_report"))
    assert event is not None
    assert event.asset_materialization is not None
    meta = {k: getattr(v, "value", v) for k, v in event.asset_materialization.metadata.items()}
    assert (meta["chain"], meta["sequence"], meta["digest"]) == (
        newest["chain"],
        2,
        newest["digest"],
    )
    assert meta["target_anchor"] == "recorded"
    code, output = _check(out)
    assert code == 0, output
    assert "anchor checked: the target (" in output
    assert "anchor checked: the Dagster instance (" in output
    assert "newest anchored report #2" in output
    assert "intact" in output

    # the anchors outlive the load's own records, which go once empty
    with connect(pair.target_url, setting="SUPABASE_DB_URL") as conn:
        drop_if_empty(conn)
    # one anchor disagreeing fails the check, naming it
    with psycopg.connect(pair.target_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE migration_assets_audit.report_anchors SET digest = 'forged' "
            "WHERE chain = %s AND sequence = 2",
            [newest["chain"]],
        )
    code, output = _check(out)
    assert code == 1, output
    assert "anchors report #2 with digest forged" in output
    assert output.count("TAMPERED") == 1, output  # the Dagster instance still agrees
    with psycopg.connect(pair.target_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE migration_assets_audit.report_anchors SET digest = %s "
            "WHERE chain = %s AND sequence = 2",
            [newest["digest"], newest["chain"]],
        )

    # an anchor out of reach is not checked: exit 2 and how to check anyway
    monkeypatch.delenv("SUPABASE_DB_URL")
    code, output = _check(out)
    assert code == 2, output
    assert "anchor NOT checked: the target" in output
    assert "--skip-anchor target" in output
    code, output = _check(out, "--skip-anchor", "target")
    assert code == 0, output
    assert "skipped (--skip-anchor)" in output
    assert "anchors checked: dagster" in output

    # the key: never a new one, and another one fails every report
    monkeypatch.setenv("MIGRATION_KEY_SECRET", "another-secret-of-enough-length")
    code, output = _check(out, "--skip-anchor", "target")
    assert code == 1, output
    assert output.count("does not match its keyed digest") == 2, output
    monkeypatch.delenv("MIGRATION_KEY_SECRET")
    monkeypatch.delenv("DAGSTER_HOME")
    code, output = _check(out, "--skip-anchor", "target", "--skip-anchor", "dagster")
    assert code == 2, output
    assert "MIGRATION_KEY_SECRET" in output


def test_a_report_written_while_the_target_is_out_of_reach_is_not_anchored_there(
    pair: Migration, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The report is evidence of whatever went wrong, so it is written; its metadata and
    `report --check` say the target never anchored it."""
    out = tmp_path / "audit"
    _write(out)
    closed = (
        f"postgresql://postgres:unused@127.0.0.1:{free_port()}/gone"
        f"?sslmode=verify-full&sslrootcert={pair.ca_file}"
    )
    monkeypatch.setenv("SUPABASE_DB_URL", closed)
    code, output = run_cli(["report", "--out", str(out)])
    assert "report #2 written" in output, output
    assert "on the target: not recorded: " in output
    monkeypatch.setenv("SUPABASE_DB_URL", pair.target_url)
    code, output = _check(out)
    assert code == 1, output
    assert "report #2 is newer than anything the target (" in output
    assert output.count("TAMPERED") == 1, output  # the Dagster instance anchored it


def test_a_forged_or_foreign_report_is_named_never_a_crash(tmp_path: Path) -> None:
    """Whatever sits in the directory (a digest in any alphabet, an older format without a
    chain id, JSON that is no report) is a named problem, not a traceback."""
    key = report_key(b"a secret of sixteen or more characters")
    prepared = prepare_report(_minimal_report(), tmp_path, key)
    prepared.write()
    assert check_chain(tmp_path, key).problems == []
    path = tmp_path / "audit-0001.json"
    forged = _load(path) | {"digest": "hmac-sha256:ünïcödé"}
    path.write_text(json.dumps(forged))
    found = check_chain(tmp_path, key)
    assert found.problems == [
        "audit-0001.json: content does not match its keyed digest "
        "(altered, re-hashed without the key, or written under another "
        "secret)"
    ]
    assert compare_anchor(found, "the target", [(1, "hmac-sha256:ßtill-forged")]) == [
        "the target anchors report #1 with digest hmac-sha256:ßtill-forged, the directory's "
        "has hmac-sha256:ünïcödé: it was replaced"
    ]
    older = {k: v for k, v in forged.items() if k != "chain"} | {"format": 1}
    path.write_text(json.dumps(older))
    found = check_chain(tmp_path, key)
    assert found.chain is None
    assert found.problems[0].startswith("audit-0001.json: report format 1, not 2")
    path.write_text("[]")
    assert check_chain(tmp_path, key).problems == ["audit-0001.json: not a report"]


def _minimal_report() -> dict[str, Any]:
    """The fields the Markdown reads, nothing else: a report of an empty plan."""
    return {
        "generated_at": "2024-01-01T00:00:00+00:00",
        "generated_by": {"os_user": "u", "host": "h", "version": "0", "dagster": "0"},
        "configuration": {},
        "plan": {"path": "plan.json", "sha256": "0" * 64, "created_at": "-", "partitions": 0},
        "alembic": {"source": "-", "target": "-"},
        "tls": {"summary": "not verified"},
        "tables": [],
        "global_checks": [],
        "verdict": {"complete": True, "problems": []},
    }


def test_the_sql_follows_each_server_s_encoding_and_is_left_out_where_none_works() -> None:
    """A LATIN1 source hashes the UTF-8 bytes of its text, as the checks do there; a source
    no row hash works in (preflight refuses it) gets no script, and no report crashes."""
    from migration_assets.defs.evidence import recompute_scripts
    from migration_assets.plan import load_plan

    shipped = load_plan(Path(__file__).resolve().parents[1] / "migration_assets/plans/demo.json")
    table = shipped.tables[0]
    latin1 = recompute_scripts(
        table, shipped.model_copy(update={"source_encoding": "LATIN1"}), None
    )
    assert "convert_from(convert_to(" in latin1["source"]
    assert "'LATIN1'" in latin1["source"]
    assert "convert_to" not in latin1["target"]
    euc_jp = shipped.model_copy(update={"source_encoding": "EUC_JP"})
    assert recompute_scripts(table, euc_jp, None) == {}
