//! The migrations of the two backends describe one schema, and the SQLite files are the ones
//! deployed databases applied (see `migrations/README.md`).

use std::collections::{BTreeMap, BTreeSet};

use sqlx::migrate::Migrator;
use sqlx::Row;

use super::test_support::db;
use super::Pool;
use super::{pg_support, postgres, sqlite};

/// SHA-384 of each SQLite migration as released: sqlx refuses to open a database whose applied
/// migration's file changed, so these must never change. A schema change is a new file.
const RELEASED_SQLITE: [(i64, &str); 2] = [
    (1, "c4ee4cc006e715e54008bb880df80324bcf0b2f325b4e367b4a1da1a9bacf3d95eda0645c1e3e02d720c3bfb9e681ae5"),
    (2, "00ddd0066faf0f203ce1891e43c9df5f6d9073dd65bfa2d5834694b8b974ec520f23cab7aff2bef06705fa2d003aecb9"),
];

#[test]
fn released_sqlite_migrations_are_unchanged() {
    for (version, checksum) in RELEASED_SQLITE {
        let m = sqlite::MIGRATOR.iter().find(|m| m.version == version).expect("released migration present");
        assert_eq!(hex::encode(&m.checksum), checksum, "migrations/sqlite/ version {version} changed");
    }
}

#[test]
fn both_backends_have_the_same_migration_versions() {
    let versions = |m: &Migrator| m.iter().map(|m| (m.version, m.description.to_string())).collect::<Vec<_>>();
    assert_eq!(versions(&sqlite::MIGRATOR), versions(&postgres::MIGRATOR));
}

/// A column as the schema means it: portable type, and whether NULL is allowed.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Clone)]
struct Column {
    ty: String,
    not_null: bool,
}

type Tables = BTreeMap<String, BTreeMap<String, Column>>;
/// index name -> (table, columns)
type Indexes = BTreeMap<String, (String, Vec<String>)>;

#[tokio::test]
async fn postgres_migrations_declare_the_sqlite_schema_with_bigint_integers() {
    let (db, _dir) = db().await;
    let Pool::Sqlite(pool) = &db.pool else { unreachable!("test_support::db is SQLite") };
    let mut sqlite_tables = Tables::new();
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name <> '_sqlx_migrations'",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    for table in &names {
        let rows =
            sqlx::query(sqlx::AssertSqlSafe(format!("PRAGMA table_info({table})"))).fetch_all(pool).await.unwrap();
        let columns = rows
            .iter()
            .map(|r| {
                let ty: String = r.get("type");
                let ty = match ty.as_str() {
                    "INTEGER" | "BIGINT" => "BIGINT".to_string(), // SQLite's INTEGER is 64-bit
                    _ => ty,
                };
                // PostgreSQL's primary keys are NOT NULL; SQLite's non-INTEGER ones are not.
                let not_null = r.get::<i64, _>("notnull") != 0 || r.get::<i64, _>("pk") != 0;
                (r.get::<String, _>("name"), Column { ty, not_null })
            })
            .collect();
        sqlite_tables.insert(table.clone(), columns);
    }
    let mut sqlite_indexes = Indexes::new();
    let index_rows = sqlx::query("SELECT name, tbl_name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")
        .fetch_all(pool)
        .await
        .unwrap();
    for r in &index_rows {
        let name: String = r.get("name");
        let cols = sqlx::query(sqlx::AssertSqlSafe(format!("PRAGMA index_info({name})")))
            .fetch_all(pool)
            .await
            .unwrap()
            .iter()
            .map(|c| c.get::<String, _>("name"))
            .collect();
        sqlite_indexes.insert(name, (r.get("tbl_name"), cols));
    }
    db.close().await;

    let (pg_tables, pg_indexes) = parse_postgres(postgres::MIGRATOR.iter().map(|m| m.sql.as_str()));
    for (table, columns) in &pg_tables {
        for (name, column) in columns {
            assert!(
                matches!(column.ty.as_str(), "BIGINT" | "TEXT" | "DOUBLE PRECISION"),
                "{table}.{name}: {} is not a portable type (integers are BIGINT)",
                column.ty
            );
        }
    }
    assert_eq!(pg_tables, sqlite_tables);
    assert_eq!(pg_indexes, sqlite_indexes);
}

/// The parser above against the real thing: migrated PostgreSQL 15 has exactly the tables and
/// columns (types, nullability) the migrations were read as declaring, and the indexes.
#[tokio::test]
async fn postgres_migrations_apply_on_postgres_as_parsed() {
    let db = pg_support::db().await;
    let Pool::Postgres(pool) = &db.pool else { unreachable!("pg_support::db is PostgreSQL") };
    let rows = sqlx::query(
        "SELECT table_name::TEXT AS t, column_name::TEXT AS c, upper(data_type::TEXT) AS ty, \
         is_nullable::TEXT = 'NO' AS not_null FROM information_schema.columns \
         WHERE table_schema = 'public' AND table_name <> '_sqlx_migrations'",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut tables = Tables::new();
    for r in &rows {
        let column = Column { ty: r.get("ty"), not_null: r.get("not_null") };
        tables.entry(r.get("t")).or_default().insert(r.get("c"), column);
    }
    let index_names: BTreeSet<String> = sqlx::query_scalar(
        "SELECT indexname::TEXT FROM pg_indexes WHERE schemaname = 'public' AND indexname NOT LIKE '%_pkey' \
         AND tablename <> '_sqlx_migrations'",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    db.close().await;

    let (parsed_tables, parsed_indexes) = parse_postgres(postgres::MIGRATOR.iter().map(|m| m.sql.as_str()));
    assert_eq!(tables, parsed_tables);
    assert_eq!(index_names, parsed_indexes.into_keys().collect());
}

/// The tables and indexes the PostgreSQL migrations create: enough of a parser for the
/// statements they use (CREATE TABLE, ALTER TABLE ADD COLUMN, CREATE INDEX, INSERT, DROP TABLE).
fn parse_postgres<'a>(files: impl Iterator<Item = &'a str>) -> (Tables, Indexes) {
    let mut tables = Tables::new();
    let mut indexes = Indexes::new();
    let sql: String =
        files.flat_map(|f| f.lines()).map(|line| line.split("--").next().unwrap()).collect::<Vec<_>>().join(" ");
    for statement in sql.split(';') {
        let words: Vec<&str> = statement.split_whitespace().collect();
        let statement = words.join(" ");
        let upper = statement.to_ascii_uppercase();
        if let Some(rest) = upper.strip_prefix("CREATE TABLE ") {
            let name = rest.split_whitespace().next().unwrap().to_ascii_lowercase();
            let body = &statement[statement.find('(').unwrap() + 1..statement.rfind(')').unwrap()];
            let mut columns = BTreeMap::new();
            let mut primary = BTreeSet::new();
            for element in split_top_level(body) {
                if let Some(keys) = element.strip_prefix("PRIMARY KEY") {
                    primary.extend(keys.trim_matches(|c| " ()".contains(c)).split(',').map(|k| k.trim().to_string()));
                } else {
                    let (column, def) = column_def(&element);
                    columns.insert(column, def);
                }
            }
            for key in primary {
                columns.get_mut(&key).unwrap_or_else(|| panic!("{name}: key {key} is no column")).not_null = true;
            }
            tables.insert(name, columns);
        } else if upper.starts_with("ALTER TABLE ") {
            let table = words[2].to_string();
            assert_eq!(upper.split_whitespace().nth(3), Some("ADD"), "{statement}");
            let def = words[words.iter().position(|w| w.eq_ignore_ascii_case("COLUMN")).unwrap() + 1..].join(" ");
            let (column, def) = column_def(&def);
            tables.get_mut(&table).unwrap().insert(column, def);
        } else if upper.starts_with("CREATE INDEX ") || upper.starts_with("CREATE UNIQUE INDEX ") {
            let skip = usize::from(upper.starts_with("CREATE UNIQUE "));
            let (name, table) = (words[2 + skip].to_string(), words[4 + skip].to_string());
            let cols = statement[statement.find('(').unwrap() + 1..statement.rfind(')').unwrap()]
                .split(',')
                .map(|c| c.trim().to_string())
                .collect();
            indexes.insert(name, (table, cols));
        } else if let Some(rest) = upper.strip_prefix("DROP TABLE ") {
            tables.remove(&rest.trim().to_ascii_lowercase());
        } else {
            assert!(upper.is_empty() || upper.starts_with("INSERT "), "unexpected statement: {statement}");
        }
    }
    (tables, indexes)
}

fn column_def(def: &str) -> (String, Column) {
    let mut words = def.split_whitespace();
    let name = words.next().unwrap().to_string();
    let rest: Vec<&str> = words.collect();
    let upper = rest.join(" ").to_ascii_uppercase();
    let ty = if upper.starts_with("DOUBLE PRECISION") { "DOUBLE PRECISION".to_string() } else { rest[0].to_string() };
    let not_null = upper.contains("NOT NULL") || upper.contains("PRIMARY KEY");
    (name, Column { ty, not_null })
}

/// `a, b (c, d), e` -> [`a`, `b (c, d)`, `e`].
fn split_top_level(body: &str) -> Vec<String> {
    let (mut parts, mut depth, mut current) = (Vec::new(), 0, String::new());
    for c in body.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(current.trim().to_string());
                current.clear();
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    if !current.trim().is_empty() {
        parts.push(current.trim().to_string());
    }
    parts
}
