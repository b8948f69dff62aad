#!/usr/bin/env python3
"""Replays on a current ClickHouse engine (chdb) every SQL statement the suite ran on the real
18.16 server, and fails on any the current engine rejects.

The 18.16 server that scripts/test.sh starts logs every query (scripts/clickhouse.sh turns on
system.query_log), so what is replayed is exactly what the gateway, its CLI and the tests
issued — migrations, inserts' column lists, reports, spend, erasure, retention, replay checks —
not a hand-kept list that drifts from the code. Statements that succeeded on 18.16 are
replayed once per shape (literals masked), with every test database mapped onto one database
that holds the schema, in the order they first ran. Then the SQL of any Grafana dashboard on
the ClickHouse datasource (dashboards/*.json, `rawSql`) runs too.

Usage: MB_CLICKHOUSE_URL=http://127.0.0.1:18123 scripts/chdb_check.py
"""
import glob
import json
import os
import re
import sys
import urllib.request

from chdb import session

# Each kind of statement the code issues must be among those replayed: a check that replays
# nothing of a kind (because a test stopped exercising it) would pass without checking it.
REQUIRED = {
    "migration DDL": r"^CREATE TABLE IF NOT EXISTS \S+\.usage_events",
    "materialized view": r"^CREATE MATERIALIZED VIEW",
    "migration ALTER": r"^ALTER TABLE \S+\.audit_events\s+ADD COLUMN",
    "usage column ALTER": r"^ALTER TABLE \S+\.usage_events\s+ADD COLUMN cache_savings",
    "migration bookkeeping": r"^INSERT INTO \S+\.schema_migrations",
    "usage insert": r"^INSERT INTO `?usage_events`?\s*\(",
    "audit insert": r"^INSERT INTO `?audit_events`?\s*\(",
    "feedback insert": r"^INSERT INTO `?feedback`?\s*\(",
    "replay check (usage)": r"^SELECT request_id FROM usage_events WHERE batch_id",
    "replay check (audit)": r"^SELECT toString\(seq\) FROM audit_events",
    "spend report": r"FROM usage_daily WHERE day >= toDate",
    "hourly spend": r"FROM usage_hourly WHERE",
    "view into a table": r"^CREATE MATERIALIZED VIEW IF NOT EXISTS \S+ TO ",
    "rollup reconcile": r"^INSERT INTO \S+\.usage_daily \(day, org",
    "rollup settle": r"^OPTIMIZE TABLE \S+\.usage_daily PARTITION",
    "chargeback": r"GLOBAL ANY LEFT JOIN",
    "budgets snapshot": r"^INSERT INTO `?budgets`?\s*\(",
    "allocations snapshot": r"^INSERT INTO `?allocations`?\s*\(",
    "forecast rows": r"^INSERT INTO `?spend_forecasts`?\s*\(",
    "anomaly rows": r"^INSERT INTO `?spend_anomalies`?\s*\(",
    "experiment report": r"JOIN \(SELECT request_id, org, variant FROM usage_events",
    "erasure": r"^ALTER TABLE \S+ UPDATE ",
    "mutation wait": r"FROM system\.mutations",
    "retention": r"DROP PARTITION",
    "audit verify": r"FROM audit_events ORDER BY chain, seq",
}

SKIP = [
    r"^SYSTEM ",
    r"system\.query_log",
    r"^DROP DATABASE",
    # Tests drop tables to simulate an upgrade; replaying that would leave the shared schema
    # without them (their re-creation has a shape already replayed).
    r"^DROP TABLE",
]


def ch(url, sql):
    req = urllib.request.Request(url, data=sql.encode(), method="POST")
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.read().decode()


def logged(url):
    """(query) of every statement that finished on the server, in the order they started."""
    ch(url, "SYSTEM FLUSH LOGS")
    out = ch(url, "SELECT query FROM system.query_log WHERE type = 2 "
                  "ORDER BY event_time, query_start_time FORMAT JSONEachRow")
    return [json.loads(line)["query"] for line in out.splitlines() if line.strip()]


def shape(sql):
    """The statement with literals masked: one replay per shape."""
    s = re.sub(r"'(?:[^'\\]|\\.)*'", "?", sql)
    s = re.sub(r"\b\d+(\.\d+)?\b", "?", s)
    return re.sub(r"\s+", " ", s).strip()


def replayable(sql, databases):
    """The statement as the current engine should run it: test databases → `mb`; an INSERT
    whose data travelled outside the query text (FORMAT …, or VALUES) gets one default row,
    which still checks its table and column list."""
    for db in databases:
        sql = re.sub(rf"\b{re.escape(db)}\b", "mb", sql)
    stripped = sql.rstrip().rstrip(";")
    if re.match(r"(?is)^INSERT INTO", stripped):
        m = re.match(r"(?is)^(INSERT INTO .*?)\s+(FORMAT \w+|VALUES)$", stripped)
        if m:
            return f"{m.group(1)} FORMAT JSONEachRow {{}}"
    return sql


def dashboard_sql():
    """rawSql of every panel on a ClickHouse datasource, with Grafana's macros filled in."""
    root = os.path.join(os.path.dirname(__file__), "..", "dashboards")
    out = []
    for path in sorted(glob.glob(os.path.join(root, "**", "*.json"), recursive=True)):
        def walk(node):
            if isinstance(node, dict):
                ds = json.dumps(node.get("datasource", ""))
                if "rawSql" in node and "clickhouse" in ds.lower():
                    out.append((path, node["rawSql"]))
                for v in node.values():
                    walk(v)
            elif isinstance(node, list):
                for v in node:
                    walk(v)
        walk(json.load(open(path)))
    return out


def grafana_macros(sql):
    s = sql
    s = re.sub(r"\$__timeFilter\((\w+)\)", r"\1 >= now() - INTERVAL 30 DAY AND \1 <= now()", s)
    s = re.sub(r"\$__dateFilter\((\w+)\)", r"\1 >= today() - 30 AND \1 <= today()", s)
    s = s.replace("$__fromTime", "(now() - INTERVAL 30 DAY)").replace("$__toTime", "now()")
    s = re.sub(r"\$\{?\w+(:\w+)?\}?", "''", s)
    return s


def main():
    url = os.environ.get("MB_CLICKHOUSE_URL")
    if not url:
        sys.exit("MB_CLICKHOUSE_URL is not set (scripts/test.sh sets it)")
    statements = logged(url)
    databases = set()
    for q in statements:
        m = re.match(r"(?is)^CREATE DATABASE IF NOT EXISTS\s+`?(\w+)`?", q)
        if m and m.group(1) not in ("default", "system"):
            databases.add(m.group(1))
    seen, replay = set(), []
    for q in statements:
        if any(re.search(p, q) for p in SKIP):
            continue
        r = replayable(q, databases)
        k = shape(r)
        if k not in seen:
            seen.add(k)
            replay.append((q, r))

    missing = [name for name, pat in REQUIRED.items()
               if not any(re.search(pat, q, re.S) for q, _ in replay)]
    s = session.Session()
    version = str(s.query("SELECT version()")).strip()
    s.query("CREATE DATABASE IF NOT EXISTS mb")
    s.query("USE mb")
    # query_log orders by the second a query started, so statements of one second may come
    # out of order (an ALTER before its CREATE): what fails is retried after the rest until a
    # pass makes no progress; what still fails is rejected.
    pending = replay
    while True:
        failures, left = [], []
        for original, sql in pending:
            try:
                s.query(sql)
            except Exception as e:  # chdb's error carries ClickHouse's own message
                failures.append((original, str(e).splitlines()[0][:400]))
                left.append((original, sql))
        if not left or len(left) == len(pending):
            break
        pending = left
    dash = dashboard_sql()
    for path, sql in dash:
        try:
            s.query(grafana_macros(sql))
        except Exception as e:
            failures.append((f"{os.path.basename(path)}: {sql}", str(e).splitlines()[0][:400]))

    print(f"chdb {version}: replayed {len(replay)} statement shapes of {len(statements)} "
          f"logged on 18.16 ({len(databases)} test databases), {len(dash)} dashboard queries")
    for original, err in failures:
        print(f"\nREJECTED: {original[:600]}\n  {err}")
    for name in missing:
        print(f"\nNOT EXERCISED: no {name} statement was logged; a test stopped covering it")
    if failures or missing:
        sys.exit(1)


if __name__ == "__main__":
    main()
