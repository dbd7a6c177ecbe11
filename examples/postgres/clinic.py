"""A clinic's patient records in PostgreSQL, encrypted column by column
with keys that never enter SQL (docs/POSTGRES.md).

- Each clinic has two CMKs in Keywarden: ``clinic-<id>`` (aes) encrypts its
  rows' identifying and clinical columns, ``clinic-<id>-index`` (hmac)
  makes the blind index of the medical record number. Destroying both
  crypto-shreds that clinic and no other.
- Every encrypted value is bound to its place: the context names the
  clinic, table, column and row id, so a value copied to another row or
  column does not decrypt.
- ``mrn_index`` is a truncated HMAC of the MRN: ``lookup(mrn)`` is one
  indexed query, then a decrypt of the (few) candidates to drop false
  positives.

Usage: ``Clinics(conn, keywarden.Client())``; see tests/test_clinic.py.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import psycopg

import keywarden

#: Bits kept of each blind index. 32 bits: about one false positive per
#: 400,000 rows per lookup; fewer bits hide more (docs/POSTGRES.md).
INDEX_BITS = 32
#: The encrypted columns.
COLUMNS = ("mrn", "name", "birth_date", "note")

SCHEMA = """
CREATE TABLE IF NOT EXISTS clinics (
    id          text PRIMARY KEY,
    index_version integer NOT NULL          -- the blind-index key version the index was built with
);
CREATE TABLE IF NOT EXISTS patients (
    id          bigserial PRIMARY KEY,
    clinic      text NOT NULL REFERENCES clinics(id),
    mrn_index   bytea NOT NULL,             -- truncated HMAC of the MRN (blind index)
    mrn         bytea NOT NULL,             -- each of these: a Keywarden Encrypt blob
    name        bytea NOT NULL,
    birth_date  bytea NOT NULL,
    note        bytea NOT NULL
);
CREATE INDEX IF NOT EXISTS patients_mrn_index ON patients (clinic, mrn_index);
"""


@dataclass(frozen=True)
class Patient:
    """One patient, in plaintext (only ever in the application's memory)."""

    mrn: str
    name: str
    birth_date: str
    note: str
    id: int | None = None


def data_key_name(clinic: str) -> str:
    return f"clinic-{clinic}"


def index_key_name(clinic: str) -> str:
    return f"clinic-{clinic}-index"


def context(clinic: str, column: str, row: int) -> dict[str, str]:
    """Where a value belongs: it decrypts nowhere else."""
    return {"clinic": clinic, "table": "patients", "column": column, "row": str(row)}


class Clinics:
    """The application's data layer. ``conn`` is a psycopg 3 connection."""

    def __init__(self, conn: psycopg.Connection, kw: keywarden.Client) -> None:
        self.conn = conn
        self.kw = kw

    def create_schema(self) -> None:
        with self.conn.cursor() as cur:
            cur.execute(SCHEMA)
        self.conn.commit()

    def add_clinic(self, clinic: str, index_version: int = 1) -> None:
        """Registers a clinic whose two keys an admin has created."""
        with self.conn.cursor() as cur:
            cur.execute("INSERT INTO clinics (id, index_version) VALUES (%s, %s)", (clinic, index_version))
        self.conn.commit()

    def _index_version(self, cur: psycopg.Cursor, clinic: str) -> int:
        cur.execute("SELECT index_version FROM clinics WHERE id = %s", (clinic,))
        row = cur.fetchone()
        if row is None:
            raise KeyError(f"no clinic {clinic!r}")
        return int(row[0])

    def insert(self, clinic: str, patients: Iterable[Patient]) -> list[int]:
        """Inserts patients; returns their row ids. Ids are drawn first, so
        that each value is encrypted for its own row."""
        patients = list(patients)
        with self.conn.cursor() as cur:
            version = self._index_version(cur, clinic)
            cur.execute("SELECT nextval('patients_id_seq') FROM generate_series(1, %s)", (len(patients),))
            ids = [int(r[0]) for r in cur.fetchall()]
            indexes = self.kw.blind_indexes(
                index_key_name(clinic),
                [p.mrn for p in patients],
                bits=INDEX_BITS,
                domain="patients.mrn",
                version=version,
            )
            key = data_key_name(clinic)
            items = [
                (key, getattr(p, col).encode(), context(clinic, col, row))
                for row, p in zip(ids, patients, strict=True)
                for col in COLUMNS
            ]
            blobs = self.kw.encrypt_fields(items)
            for b in blobs:
                if isinstance(b, keywarden.KeywardenError):
                    raise b
            rows = []
            for i, (row, idx) in enumerate(zip(ids, indexes, strict=True)):
                cols = blobs[i * len(COLUMNS) : (i + 1) * len(COLUMNS)]
                rows.append((row, clinic, idx, *cols))
            cur.executemany(
                "INSERT INTO patients (id, clinic, mrn_index, mrn, name, birth_date, note)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                rows,
            )
        self.conn.commit()
        return ids

    def lookup(self, clinic: str, mrn: str) -> Patient | None:
        """The patient with this MRN: one indexed query, then a decrypt of
        the candidates (a truncated index may match a few other rows)."""
        with self.conn.cursor() as cur:
            version = self._index_version(cur, clinic)
            idx = self.kw.blind_index(
                index_key_name(clinic), mrn, bits=INDEX_BITS, domain="patients.mrn", version=version
            )
            cur.execute(
                "SELECT id, mrn, name, birth_date, note FROM patients WHERE clinic = %s AND mrn_index = %s",
                (clinic, idx),
            )
            candidates = cur.fetchall()
        for row, *blobs in candidates:
            p = self._open_row(clinic, row, blobs)
            if p.mrn == mrn:
                return p
        return None

    def _open_row(self, clinic: str, row: int, blobs: Iterable[bytes]) -> Patient:
        """Decrypts one row's columns in one call (raises the daemon's
        typed error if the clinic's key is gone)."""
        items = [(bytes(b), context(clinic, col, row)) for col, b in zip(COLUMNS, blobs, strict=True)]
        values = []
        # Only under this clinic's key: a value planted in its rows under
        # another key (another tenant's) is refused, and shredding this
        # clinic leaves nothing of it readable.
        for v in self.kw.decrypt_fields(items, key=data_key_name(clinic)):
            if isinstance(v, keywarden.KeywardenError):
                raise v
            values.append(v.decode())
        return Patient(*values, id=row)

    def read(self, clinic: str, row: int) -> Patient:
        """One row by id (raises the daemon's typed error if its clinic's
        key is gone)."""
        with self.conn.cursor() as cur:
            cur.execute(
                "SELECT mrn, name, birth_date, note FROM patients WHERE clinic = %s AND id = %s",
                (clinic, row),
            )
            found = cur.fetchone()
        if found is None:
            raise KeyError(row)
        return self._open_row(clinic, row, found)
