"""A database with the awkward types a restore must carry, and a way to compare two."""
from __future__ import annotations

import uuid

from tests.pg import PgServer

# Every kind of value that has broken a dump/restore somewhere: binary, JSON, arrays,
# enums, exact numerics, NULLs, non-ASCII text with quotes, backslashes and tabs,
# sequences (owned and free-standing), a view and a function.
VARIED_SCHEMA = r"""
create type mood as enum ('sad', 'ok', 'happy');
create sequence invoice_number start 1000 increment 7;
create table item (
    id        bigserial primary key,
    name      text not null,
    raw       bytea,
    doc       jsonb,
    tags      text[],
    scores    integer[],
    feeling   mood,
    price     numeric(20, 6),
    ratio     double precision,
    created   timestamptz,
    day       date,
    flag      boolean
);
insert into item (name, raw, doc, tags, scores, feeling, price, ratio, created, day, flag) values
  ('plain', '\x00ff10'::bytea, '{"a": 1, "b": [true, null]}', '{a,b}', '{1,2,3}', 'ok',
   12345678901234.123456, 0.1, '2026-04-09 03:17:00+00', '2024-02-29', true),
  (E'Zoë''s "quoted" \\ back\\slash\ttab — 東京 🚀', decode('deadbeef', 'hex'),
   '{"nested": {"ü": "x\"y", "n": 1.5e10}}', '{"with space","with,comma",NULL}', '{}',
   'happy', -0.000001, 'NaN', null, null, false),
  ('nulls', null, null, null, null, null, null, null, null, null, null);
select setval('invoice_number', 1042);
create table note (item_id bigint references item(id), body text);
insert into note select id, repeat('x', id::int * 100) from item;
create view happy_item as select id, name from item where feeling = 'happy';
create function item_count(min_id bigint) returns bigint
  language sql stable as $$ select count(*) from item where id >= min_id $$;
"""


def create_varied_database(pg: PgServer) -> str:
    name = pg.create_database()
    pg.psql(name, VARIED_SCHEMA)
    return name


def snapshot(pg: PgServer, dbname: str) -> dict[str, str]:
    """Everything a user would check after a restore, as comparable text.

    Every table's rows in a fixed order, every sequence's position, every view's
    definition and rows, every function's definition and a call, every enum's labels.
    Two psql runs (the names, then every query), not one per query: tests take hundreds.
    """
    queries: dict[str, str] = {}
    names = pg.psql(dbname, "select 'table', tablename from pg_tables where schemaname ="
                            " 'public' union all select 'sequence', sequencename from"
                            " pg_sequences where schemaname = 'public' union all select"
                            " 'view', viewname from pg_views where schemaname = 'public'"
                            " order by 1, 2")
    for kind, name in (line.split("|", 1) for line in names.splitlines()):
        if kind == "table":
            queries[f"table {name}"] = f'select t::text from public."{name}" t order by t::text'
            queries[f"columns {name}"] = (
                "select column_name, data_type, column_default from information_schema.columns"
                f" where table_name = '{name}' order by 1")
        elif kind == "sequence":
            queries[f"sequence {name}"] = f'select last_value, is_called from public."{name}"'
        else:
            queries[f"view {name}"] = f"select pg_get_viewdef('public.{name}')"
            queries[f"view rows {name}"] = f'select v::text from public."{name}" v order by 1'
    queries["functions"] = (
        "select pg_get_functiondef(p.oid) from pg_proc p join pg_namespace n"
        " on n.oid = p.pronamespace where n.nspname = 'public' order by p.proname")
    queries["enums"] = ("select t.typname, e.enumlabel from pg_enum e join pg_type t"
                        " on t.oid = e.enumtypid order by 1, e.enumsortorder")
    # Each query's output follows a line that no row can hold: the marker and its key.
    marker = uuid.uuid4().hex
    script = "".join("select '{} {}';\n{};\n".format(marker, key.replace("'", "''"), sql)
                     for key, sql in queries.items())
    result: dict[str, str] = {}
    for chunk in pg.psql(dbname, script).split(f"{marker} ")[1:]:
        key, _, output = chunk.partition("\n")
        result[key] = output
    return result
