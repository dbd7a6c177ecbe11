"""The clinic example end to end on a real PostgreSQL server and a real
Keywarden dev daemon: 10,000 rows, lookups by MRN through the blind index,
no plaintext in the table file or a dump, an encrypted pg_dump restored,
one clinic crypto-shredded while the other still opens, and a legal hold
that stops a shredding."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import time

import psycopg
import pytest

import keywarden
from clinic import Clinics, Patient, data_key_name, index_key_name

ROWS = 10_000
CLINICS = ("north", "south")


def patient(clinic: str, i: int) -> Patient:
    return Patient(
        mrn=f"MRN-{clinic[0].upper()}{i:07d}",
        name=f"Patient {clinic} {i}",
        birth_date=f"19{50 + i % 50}-0{1 + i % 9}-1{i % 9}",
        note=f"IVF cycle {i % 7}; embryo transfer notes for {clinic} patient {i}",
    )


@pytest.fixture(scope="module")
def app(dev, postgres):
    for c in CLINICS:
        dev.create_key(data_key_name(c))
        dev.create_key(index_key_name(c), "--kind", "hmac")
    conn = psycopg.connect(postgres.dsn())
    kw = keywarden.Client(dev.socket)
    clinics = Clinics(conn, kw)
    clinics.create_schema()
    started = time.perf_counter()
    for c in CLINICS:
        clinics.add_clinic(c)
        per = ROWS // len(CLINICS)
        for start in range(0, per, 500):
            clinics.insert(c, [patient(c, i) for i in range(start, min(per, start + 500))])
    elapsed = time.perf_counter() - started
    print(f"\ninserted {ROWS} rows in {elapsed:.2f} s: {ROWS / elapsed:.0f} rows/s")
    yield clinics
    kw.close()
    conn.close()


def test_lookup_by_mrn_is_one_indexed_query_and_one_decrypt(app) -> None:
    with app.conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM patients")
        assert cur.fetchone()[0] == ROWS
        # The planner uses the btree index for the lookup query.
        cur.execute("SET enable_seqscan = off")
        cur.execute("EXPLAIN SELECT id FROM patients WHERE clinic = 'north' AND mrn_index = '\\x00'::bytea")
        plan = " ".join(r[0] for r in cur.fetchall())
        assert "patients_mrn_index" in plan
        cur.execute("RESET enable_seqscan")
    timings = []
    for i in range(0, ROWS // 2, 97):
        want = patient("north", i)
        t = time.perf_counter()
        got = app.lookup("north", want.mrn)
        timings.append(time.perf_counter() - t)
        assert got is not None and (got.mrn, got.name, got.note) == (want.mrn, want.name, want.note)
    assert app.lookup("north", "MRN-NOBODY") is None
    # An MRN of the other clinic is not found through this clinic's index.
    assert app.lookup("north", patient("south", 5).mrn) is None
    timings.sort()
    print(f"\nlookup latency over {len(timings)} lookups: median {timings[len(timings) // 2] * 1000:.2f} ms")


def test_no_plaintext_reaches_the_table_file_or_a_dump(app, postgres) -> None:
    with app.conn.cursor() as cur:
        cur.execute("CHECKPOINT")
        cur.execute("SELECT pg_relation_filepath('patients')")
        rel = cur.fetchone()[0]
    table = (postgres.data / rel).read_bytes()
    assert len(table) > ROWS * 100, "the table file should hold the rows"
    dump = postgres.tool("pg_dump", "-d", "postgres", "-t", "patients")
    assert b"COPY public.patients" in dump
    for i in (0, 1, 777, ROWS // 2 - 1):
        for p in (patient("north", i), patient("south", i)):
            for secret in (p.mrn, p.name, p.note):
                assert secret.encode() not in table, f"{secret!r} in the table file"
                assert secret.encode() not in dump, f"{secret!r} in pg_dump"


def test_an_encrypted_backup_restores(app, dev, postgres, tmp_path) -> None:
    backup = tmp_path / "clinic.dump.kwen"
    ctx = ["--context", "purpose=backup", "--context", "db=postgres"]
    dump = subprocess.Popen(postgres.cmd("pg_dump", "-Fc", "postgres"), stdout=subprocess.PIPE)
    enc = subprocess.run(
        [str(dev.binary), "encrypt", "--key", data_key_name("north"), *ctx, "-o", str(backup)],
        stdin=dump.stdout,
        env=dev.env,
        capture_output=True,
    )
    assert dump.wait() == 0 and enc.returncode == 0, enc.stderr
    raw = backup.read_bytes()
    assert raw.startswith(b"KWEN") and b"PGDMP" not in raw
    postgres.tool("createdb", "restored")
    dec = subprocess.Popen(
        [str(dev.binary), "decrypt", "-i", str(backup), *ctx], stdout=subprocess.PIPE, env=dev.env
    )
    restore = subprocess.run(
        postgres.cmd("pg_restore", "-d", "restored"), stdin=dec.stdout, capture_output=True
    )
    assert dec.wait() == 0 and restore.returncode == 0, restore.stderr
    with psycopg.connect(postgres.dsn("restored")) as conn:
        restored = Clinics(conn, app.kw)
        want = patient("south", 42)
        got = restored.lookup("south", want.mrn)
        assert got is not None and got.note == want.note


def second_admin() -> list[str]:
    nobody = pwd.getpwnam("nobody")
    if os.geteuid() != 0:
        pytest.skip("a second admin needs another uid (run as root)")
    return ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups"]


def shred(dev, clinic: str) -> None:
    """Crypto-shredding under dual control: one admin asks, another
    approves, for both of the clinic's keys."""
    for key in (data_key_name(clinic), index_key_name(clinic)):
        r = dev.cli("key", "destroy-now", key, "--output", "json")
        request = json.loads(r.stdout)["request_id"]
        dev.cli("key", "approve", key, request, as_user=second_admin())
    # The scheduler destroys the approved keys' HSM objects.
    deadline = time.monotonic() + 60
    for key in (data_key_name(clinic), index_key_name(clinic)):
        while json.loads(dev.cli("key", "show", key, "--output", "json").stdout)["state"] != "destroyed":
            assert time.monotonic() < deadline, f"{key} was not destroyed"
            time.sleep(0.2)


def test_a_clinic_under_legal_hold_cannot_be_shredded(app, dev) -> None:
    dev.cli("key", "hold", data_key_name("south"), "--reason", "litigation 2026-114")
    r = dev.cli("key", "destroy-now", data_key_name("south"), check=False)
    assert r.returncode != 0 and b"hold" in r.stderr.lower()
    assert app.lookup("south", patient("south", 3).mrn) is not None


def test_shredding_one_clinic_leaves_the_other(app, dev) -> None:
    north_row = app.lookup("north", patient("north", 11).mrn).id
    shred(dev, "north")
    # Its rows are still in the table, and open for nobody, ever.
    with pytest.raises(keywarden.FailedPreconditionError) as e:
        app.read("north", north_row)
    assert e.value.key_state == "destroyed"
    with pytest.raises(keywarden.FailedPreconditionError):
        app.lookup("north", patient("north", 11).mrn)
    # The other clinic's rows still open.
    got = app.lookup("south", patient("south", 11).mrn)
    assert got is not None and got.name == patient("south", 11).name
