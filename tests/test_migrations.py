"""Frozen migrations: the chain equals sql/, sql/ never changes without a revision,
the revision template works, downgrades undo, the runner is safe to race."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from agent_messaging import migrations

from .schema_helpers import (
    add_revision,
    amp,
    apply_sql_dir,
    catalog,
    catalog_difference,
    copy_scripts,
)


def test_chain_starts_at_the_baseline_and_alembic_agrees() -> None:
    chain = migrations.revision_chain()
    assert chain[0].revision == migrations.BASELINE_REVISION
    assert chain[0].down_revision is None
    assert migrations.script_head() == migrations.head_revision() == chain[-1].revision
    assert not migrations.LEGACY_REVISIONS & {r.revision for r in chain}
    for rev in chain:
        frozen = migrations.frozen_sql_dir(rev.path.parent)
        assert (frozen / f"{rev.stem}.upgrade.sql").is_file(), rev.stem
        assert (frozen / f"{rev.stem}.downgrade.sql").is_file(), rev.stem


def test_manifest_lists_every_sql_file() -> None:
    on_disk = {p.name for p in migrations.sql_dir().glob("*.sql")}
    assert set(migrations.sql_manifest()) == on_disk


def test_sql_dir_changes_come_with_a_revision() -> None:
    """(c) sql/ as it is now must be what the head revision says it results in."""
    head = migrations.revision_chain()[-1]
    now = migrations.sql_state_hash()
    if migrations.RELEASES:
        todo = (
            "add a delta revision (python scripts/migrations.py revision -m '...') "
            f'that makes the change, with sql_hash = "{now}"'
        )
    else:
        todo = "before the first release: python scripts/migrations.py freeze-baseline"
    assert head.sql_hash == now, (
        f"sql/ changed after revision {head.revision} (which records sql/ hash "
        f"{head.sql_hash[:12]}, sql/ is now {now[:12]}): {todo}"
    )


def test_unreleased_baseline_is_sql_dir_concatenated() -> None:
    """Before the first release the baseline's frozen file is exactly what
    freeze-baseline writes from sql/ (so the two cannot drift apart unnoticed)."""
    if migrations.RELEASES:
        pytest.skip("the baseline is released: it is frozen, sql/ moves on with deltas")
    baseline = migrations.revision_chain()[0]
    upgrade_sql, downgrade_sql = migrations.render_baseline(baseline.revision)
    frozen = migrations.frozen_sql_dir(baseline.path.parent)
    assert (frozen / f"{baseline.stem}.upgrade.sql").read_text() == upgrade_sql, (
        "run python scripts/migrations.py freeze-baseline"
    )
    assert (frozen / f"{baseline.stem}.downgrade.sql").read_text() == downgrade_sql


def test_released_revisions_are_unchanged_since_their_tag() -> None:
    """Released revision files are frozen: compare them with the release tag's."""
    if not migrations.RELEASES:
        pytest.skip("no release yet (agent_messaging.migrations.RELEASES is empty)")
    root = migrations.alembic_dir().parent
    chain = migrations.revision_chain()
    compared = 0
    for version, head in migrations.RELEASES.items():
        tag = f"v{version}"
        found = subprocess.run(
            ["git", "rev-parse", "-q", "--verify", f"refs/tags/{tag}"], cwd=root, check=False
        )
        if found.returncode != 0:
            continue
        for rev in chain[: [r.revision for r in chain].index(head) + 1]:
            frozen = migrations.frozen_sql_dir(rev.path.parent)
            for path in (
                rev.path,
                frozen / f"{rev.stem}.upgrade.sql",
                frozen / f"{rev.stem}.downgrade.sql",
            ):
                relative = path.relative_to(root).as_posix()
                then = subprocess.run(
                    ["git", "show", f"{tag}:{relative}"],
                    cwd=root,
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                assert path.read_text() == then, f"{relative} was edited after {tag}"
                compared += 1
    if not compared:
        pytest.skip("no release tag in this checkout")


def test_released_revisions_match_their_recorded_hashes() -> None:
    """The same guard without the tag (a checkout may lack it): every file of every
    released revision is listed in alembic/versions/RELEASED.sha256 with its hash."""
    chain = migrations.revision_chain()
    versions = chain[0].path.parent
    recorded: dict[str, str] = {}
    for line in (versions / "RELEASED.sha256").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            digest, name = line.split(maxsplit=1)
            recorded[name.strip()] = digest
    names = [r.revision for r in chain]
    for head in migrations.RELEASES.values():
        for rev in chain[: names.index(head) + 1]:
            frozen = migrations.frozen_sql_dir(rev.path.parent)
            for path in (
                rev.path,
                frozen / f"{rev.stem}.upgrade.sql",
                frozen / f"{rev.stem}.downgrade.sql",
            ):
                name = path.relative_to(versions).as_posix()
                assert name in recorded, f"{name} is released but has no recorded hash"
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                assert digest == recorded[name], f"{name} was edited after its release"


def test_migrations_from_zero_equal_sql_dir(empty_dsn: str, dsn: str) -> None:
    """(a) `dsn` comes from the template, built by the revision chain; the other is
    built straight from sql/. Tables, columns, defaults, indexes, constraints,
    function signatures and bodies, settings, owners, grants, triggers, views."""
    apply_sql_dir(empty_dsn)
    migrated, direct = catalog(dsn), catalog(empty_dsn)
    kinds = {kind for kind, _ in migrated}
    assert {"column", "constraint", "index", "function", "view", "trigger"} <= kinds
    assert migrated == direct, "chain (left) vs sql/ (right):\n" + catalog_difference(
        migrated, direct
    )


def test_catalog_sees_a_function_body_and_a_grant(empty_dsn: str, dsn: str) -> None:
    """The comparison above can fail: a body edited, a grant added, a column moved."""
    apply_sql_dir(empty_dsn)
    before = catalog(empty_dsn)
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE OR REPLACE FUNCTION amp.meeting_channel(p_meeting_id uuid) RETURNS text "
            "LANGUAGE sql IMMUTABLE STRICT AS $$ SELECT 'amp_meeting_' || p_meeting_id $$"
        )
    edited = catalog(empty_dsn)
    assert {k for k, _ in before ^ edited} == {"function"}
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute("GRANT SELECT ON amp.agents TO PUBLIC")
    assert {k for k, _ in edited ^ catalog(empty_dsn)} == {"relation"}


def test_downgrade_and_upgrade_again(empty_dsn: str) -> None:
    migrations.upgrade(empty_dsn)
    head = catalog(empty_dsn)
    migrations.downgrade(empty_dsn, "base")
    with psycopg.connect(empty_dsn) as conn:
        left = conn.execute(
            "SELECT string_agg(relname, ', ') FROM pg_class "
            "WHERE relnamespace = 'amp'::regnamespace "
            "AND relname !~ '^(alembic_version|schema_revisions)'"
        ).fetchone()
        functions = conn.execute(
            "SELECT count(*) FROM pg_proc WHERE pronamespace = 'amp'::regnamespace"
        ).fetchone()
        recorded = conn.execute("SELECT count(*) FROM amp.schema_revisions").fetchone()
    assert left == (None,) and functions == (0,) and recorded == (0,)
    migrations.upgrade(empty_dsn)
    assert catalog(empty_dsn) == head


def test_each_revision_downgrades_to_what_it_was(empty_dsn: str) -> None:
    revisions = [r.revision for r in migrations.revision_chain()]
    snapshots = {}
    for revision in revisions:
        migrations.upgrade(empty_dsn, revision)
        snapshots[revision] = catalog(empty_dsn)
    for revision in reversed(revisions[:-1]):
        migrations.downgrade(empty_dsn, revision)
        assert catalog(empty_dsn) == snapshots[revision], revision


def test_revision_template_makes_a_working_delta(tmp_path: Path, empty_dsn: str) -> None:
    """`revision` (alembic's template plus the frozen files) gives a delta that lints,
    records itself, announces itself, and downgrades."""
    location = copy_scripts(tmp_path)
    path = add_revision(
        location,
        "Agents get a nickname",
        "ALTER TABLE amp.agents ADD COLUMN nickname text;\n",
        "ALTER TABLE amp.agents DROP COLUMN nickname;\n",
    )
    head = migrations.head_revision()
    expected = f"{int(head) + 1:04d}"
    assert path.name == f"{expected}_agents_get_a_nickname.py"
    text = path.read_text()
    assert f'down_revision = "{head}"' in text and "breaking = False" in text
    assert f'sql_hash = "{migrations.sql_state_hash()}"' in text
    lint = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--isolated", "--select", "E,F,W,I,UP", path],
        capture_output=True,
        text=True,
        check=False,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    form = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", "--line-length", "100", path],
        capture_output=True,
        text=True,
        check=False,
    )
    assert form.returncode == 0, form.stdout + form.stderr

    with psycopg.connect(empty_dsn, autocommit=True) as listener:
        listener.execute("LISTEN amp_migrations")
        result = migrations.upgrade(empty_dsn, script_location=location)
        notes = [n.payload for n in listener.notifies(timeout=5, stop_after=2)]
    assert result.before is None and result.after == expected
    assert result.applied == [*[r.revision for r in migrations.revision_chain()], expected]
    assert any(f'"revision": "{expected}"' in note for note in notes), notes
    with psycopg.connect(empty_dsn) as conn:
        rows = conn.execute(
            "SELECT revision, breaking, sql_hash FROM amp.schema_revisions ORDER BY revision"
        ).fetchall()
        assert rows[-1] == (expected, False, migrations.sql_state_hash())
        assert conn.execute(
            "SELECT count(*) FROM pg_attribute WHERE attrelid = 'amp.agents'::regclass "
            "AND attname = 'nickname'"
        ).fetchone() == (1,)
    migrations.downgrade(empty_dsn, head, script_location=location)
    with psycopg.connect(empty_dsn) as conn:
        assert conn.execute(
            "SELECT count(*) FROM pg_attribute WHERE attrelid = 'amp.agents'::regclass "
            "AND attname = 'nickname' AND NOT attisdropped"
        ).fetchone() == (0,)
        assert conn.execute("SELECT max(revision) FROM amp.schema_revisions").fetchone() == (head,)


def test_breaking_flag_of_a_new_revision(tmp_path: Path) -> None:
    location = copy_scripts(tmp_path)
    path = add_revision(location, "drop x", "", "", breaking=True)
    assert "\nbreaking = True\n" in path.read_text()
    assert migrations.revision_chain(location / "versions")[-1].breaking


def test_freeze_baseline_refuses_after_a_release(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(migrations, "RELEASES", {"0.1.0": migrations.BASELINE_REVISION})
    with pytest.raises(migrations.SchemaError, match="the baseline is released"):
        migrations.freeze_baseline()


def test_amp_migrate_reports_current_and_target(empty_dsn: str) -> None:
    head = migrations.head_revision()
    done = amp("migrate", "--database-url", empty_dsn)
    assert done.returncode == 0, done.stderr
    assert f"revision none -> {head} (target {head}" in done.stdout, done.stdout
    again = amp("migrate", "--database-url", empty_dsn)
    assert again.returncode == 0, again.stderr
    assert f"at revision {head} (target {head}" in again.stdout and "nothing to do" in (
        again.stdout
    )
    with psycopg.connect(empty_dsn) as conn:
        version = conn.execute("SELECT version_num FROM amp.alembic_version").fetchone()
    assert version == (head,)


async def test_sdk_migrates_on_start(empty_dsn: str) -> None:
    from agent_messaging import AgentMessaging

    from .helpers import make_config

    async with AgentMessaging[str](make_config(empty_dsn)) as sdk:
        await sdk.register_organization("org1")
        assert await migrations.current_revision(sdk.db) == migrations.head_revision()


def test_concurrent_processes_migrate_once(empty_dsn: str) -> None:
    """Three processes migrating the same empty database at once: the advisory lock
    in env.py serialises them; one migrates, the others find it done."""
    cmd = [sys.executable, "-m", "agent_messaging.cli", "migrate", "--database-url", empty_dsn]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        outputs.append(out)
    assert sum("nothing to do" in out for out in outputs) == 2, outputs
    with psycopg.connect(empty_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM amp.alembic_version").fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM amp.agents").fetchone() == (0,)
