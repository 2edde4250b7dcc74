//! The SQL the viewer runs, on Athena and on the local engine alike, and the names in it.
//!
//! User input never becomes SQL text: values travel as placeholders (`?` on Athena, as execution
//! parameters; `$1, $2, ...` on the local engine), and the only names spliced into the text —
//! database and table — come from flags and are checked by [`Identifier::parse`] at start-up.

use std::fmt;

use clickheatmap_model::time::civil_from_millis;

use crate::params::{PageId, QueryRange};

/// Most pages the page list returns.
pub const MAX_PAGES: usize = 1000;

/// A Glue database or table name: 1 to 255 letters, digits and underscores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identifier(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {value:?} is not a valid name: use 1 to 255 letters, digits and underscores")]
pub struct IdentifierError {
    pub what: &'static str,
    pub value: String,
}

impl Identifier {
    pub fn parse(what: &'static str, value: &str) -> Result<Identifier, IdentifierError> {
        let valid = (1..=255).contains(&value.len())
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if valid {
            Ok(Identifier(value.to_owned()))
        } else {
            Err(IdentifierError {
                what,
                value: value.to_owned(),
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The table a query reads: `"database"."table"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    pub database: Identifier,
    pub table: Identifier,
}

impl TableName {
    pub fn quoted(&self) -> String {
        format!("\"{}\".\"{}\"", self.database, self.table)
    }
}

/// Longest raw SQL statement accepted.
pub const MAX_RAW_SQL_BYTES: usize = 64 * 1024;

/// Checks a raw statement: one read-only statement (`SELECT` or `WITH`), within the size limit.
/// Not a security boundary — on Athena the workgroup's IAM permissions are, locally the engine
/// refuses anything but queries — but it turns DDL and DML typed by mistake away early.
pub fn check_raw_sql(sql: &str) -> Result<String, String> {
    if sql.len() > MAX_RAW_SQL_BYTES {
        return Err(format!(
            "the statement is {} bytes; at most {MAX_RAW_SQL_BYTES} are allowed",
            sql.len()
        ));
    }
    let statement = sql.trim().trim_end_matches(';').trim_end();
    let mut rest = statement;
    loop {
        rest = rest.trim_start();
        if let Some(comment) = rest.strip_prefix("--") {
            rest = comment.split_once('\n').map_or("", |(_, after)| after);
        } else if let Some(comment) = rest.strip_prefix("/*") {
            rest = comment.split_once("*/").map_or("", |(_, after)| after);
        } else {
            break;
        }
    }
    let keyword: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect::<String>()
        .to_ascii_uppercase();
    if keyword != "SELECT" && keyword != "WITH" {
        return Err("only one SELECT (or WITH ... SELECT) statement can be run".into());
    }
    Ok(statement.to_owned())
}

/// A value bound to a placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlValue {
    Text(String),
    Integer(i64),
}

impl SqlValue {
    /// The value as a SQL literal: how Athena takes execution parameters.
    pub fn literal(&self) -> String {
        match self {
            SqlValue::Text(text) => string_literal(text),
            SqlValue::Integer(number) => number.to_string(),
        }
    }
}

/// A SQL text with `?` placeholders and their values, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub sql: String,
    pub values: Vec<SqlValue>,
}

impl Statement {
    /// The values as SQL literals (Athena execution parameters).
    pub fn literals(&self) -> Vec<String> {
        self.values.iter().map(SqlValue::literal).collect()
    }

    /// The text with numbered placeholders (`$1`, `$2`, ...), as the local engine binds them.
    /// Every `?` is a placeholder: the generated text has no string literals.
    pub fn numbered_sql(&self) -> String {
        let mut numbered = String::with_capacity(self.sql.len() + 2 * self.values.len());
        let mut next = 0;
        for c in self.sql.chars() {
            if c == '?' {
                next += 1;
                numbered.push('$');
                numbered.push_str(&next.to_string());
            } else {
                numbered.push(c);
            }
        }
        numbered
    }
}

/// A SQL string literal: `'text'`, with quotes doubled.
pub fn string_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// The partitions (`dt`, `hour`) that can hold a window ending in the range.
///
/// Partitions are named after `window_start`, which lies at most `max_window_ms` before
/// `window_end`, and before `to` (a window ends after it starts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionBounds {
    pub first_dt: String,
    pub first_hour: String,
    pub last_dt: String,
    pub last_hour: String,
}

impl PartitionBounds {
    pub fn new(range: &QueryRange, max_window_ms: i64) -> PartitionBounds {
        let first = civil_from_millis(range.from_ms.saturating_sub(max_window_ms));
        let last = civil_from_millis(range.to_ms.saturating_sub(1));
        let dt = |c: &clickheatmap_model::time::Civil| {
            format!("{:04}-{:02}-{:02}", c.year, c.month, c.day)
        };
        PartitionBounds {
            first_dt: dt(&first),
            first_hour: format!("{:02}", first.hour),
            last_dt: dt(&last),
            last_hour: format!("{:02}", last.hour),
        }
    }
}

/// The `WHERE` terms shared by the queries: partitions first (so that the engine prunes them
/// before opening a file), then the exact window filter.
fn range_terms(range: &QueryRange, max_window_ms: i64, values: &mut Vec<SqlValue>) -> String {
    let bounds = PartitionBounds::new(range, max_window_ms);
    values.extend([
        SqlValue::Text(bounds.first_dt.clone()),
        SqlValue::Text(bounds.last_dt.clone()),
        SqlValue::Text(bounds.first_dt),
        SqlValue::Text(bounds.first_hour),
        SqlValue::Text(bounds.last_dt),
        SqlValue::Text(bounds.last_hour),
        SqlValue::Integer(range.from_ms),
        SqlValue::Integer(range.to_ms),
    ]);
    "dt BETWEEN ? AND ?\n  AND (dt > ? OR hour >= ?)\n  AND (dt < ? OR hour <= ?)\n  AND window_end >= ? AND window_end < ?"
        .to_owned()
}

/// The heatmap of one page: the demo query, per page, with partition predicates.
pub fn heatmap(
    table: &TableName,
    page: &PageId,
    range: &QueryRange,
    max_window_ms: i64,
) -> Statement {
    let mut values = vec![SqlValue::Text(page.as_str().to_owned())];
    let terms = range_terms(range, max_window_ms, &mut values);
    Statement {
        sql: format!(
            "SELECT grid_x, grid_y, SUM(clicks) AS clicks\nFROM {}\nWHERE page_id = ?\n  AND {terms}\nGROUP BY 1, 2\nORDER BY clicks DESC",
            table.quoted()
        ),
        values,
    }
}

/// The pages with clicks in the range, busiest first.
pub fn pages(table: &TableName, range: &QueryRange, max_window_ms: i64) -> Statement {
    let mut values = Vec::new();
    let terms = range_terms(range, max_window_ms, &mut values);
    Statement {
        sql: format!(
            "SELECT page_id, SUM(clicks) AS clicks\nFROM {}\nWHERE {terms}\nGROUP BY 1\nORDER BY clicks DESC, page_id\nLIMIT {MAX_PAGES}",
            table.quoted()
        ),
        values,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> TableName {
        TableName {
            database: Identifier::parse("database", "heatmap_demo").unwrap(),
            table: Identifier::parse("table", "curated_heatmap").unwrap(),
        }
    }

    #[test]
    fn identifiers() {
        assert!(Identifier::parse("table", "curated_heatmap").is_ok());
        for bad in ["", "a-b", "a\"b", "a.b", "a b"] {
            assert!(Identifier::parse("table", bad).is_err(), "{bad}");
        }
        assert_eq!(table().quoted(), "\"heatmap_demo\".\"curated_heatmap\"");
    }

    #[test]
    fn literals_double_quotes() {
        assert_eq!(string_literal("it's"), "'it''s'");
    }

    #[test]
    fn partitions_cover_the_window_start() {
        // 2025-12-28T23:30Z .. 2025-12-29T00:30Z with windows up to an hour long.
        let range = QueryRange {
            from_ms: 1_766_964_600_000,
            to_ms: 1_766_968_200_000,
        };
        let bounds = PartitionBounds::new(&range, 3_600_000);
        assert_eq!(
            bounds,
            PartitionBounds {
                first_dt: "2025-12-28".into(),
                first_hour: "22".into(),
                last_dt: "2025-12-29".into(),
                last_hour: "00".into(),
            }
        );
        // `to` on an hour boundary does not open the next hour.
        let range = QueryRange {
            from_ms: 1_766_966_400_000 - 3_600_000,
            to_ms: 1_766_966_400_000,
        };
        let bounds = PartitionBounds::new(&range, 60_000);
        assert_eq!(
            (bounds.first_hour.as_str(), bounds.last_hour.as_str()),
            ("22", "23")
        );
        assert_eq!(bounds.last_dt, "2025-12-28");
    }

    #[test]
    fn statements_use_placeholders_only() {
        let page = PageId::parse(Some("demo-page")).unwrap();
        let range = QueryRange {
            from_ms: 1_766_916_000_000,
            to_ms: 1_766_919_600_000,
        };
        let statement = heatmap(&table(), &page, &range, 3_600_000);
        assert!(!statement.sql.contains("demo-page"));
        assert_eq!(statement.sql.matches('?').count(), statement.values.len());
        assert_eq!(
            statement.literals(),
            [
                "'demo-page'",
                "'2025-12-28'",
                "'2025-12-28'",
                "'2025-12-28'",
                "'09'",
                "'2025-12-28'",
                "'10'",
                "1766916000000",
                "1766919600000"
            ]
        );
        let pages = pages(&table(), &range, 3_600_000);
        assert_eq!(pages.sql.matches('?').count(), pages.values.len());
        assert!(
            pages
                .sql
                .starts_with("SELECT page_id, SUM(clicks) AS clicks")
        );
    }

    #[test]
    fn numbered_placeholders_for_the_local_engine() {
        let page = PageId::parse(Some("home")).unwrap();
        let range = QueryRange {
            from_ms: 1_766_916_000_000,
            to_ms: 1_766_919_600_000,
        };
        let statement = heatmap(&table(), &page, &range, 60_000);
        let numbered = statement.numbered_sql();
        assert!(!numbered.contains('?'));
        assert!(numbered.contains("WHERE page_id = $1\n"));
        assert!(numbered.contains("window_end >= $8 AND window_end < $9"));
        assert_eq!(statement.values[8], SqlValue::Integer(1_766_919_600_000));
    }

    #[test]
    fn raw_sql_must_be_a_query() {
        assert_eq!(check_raw_sql("  select 1;  ").as_deref(), Ok("select 1"));
        assert!(check_raw_sql("-- note\n/* x */ WITH t AS (SELECT 1) SELECT * FROM t").is_ok());
        for bad in [
            "",
            "DROP TABLE x",
            "-- SELECT\nDELETE FROM x",
            "INSERT INTO x SELECT 1",
        ] {
            assert!(check_raw_sql(bad).is_err(), "{bad}");
        }
        assert!(check_raw_sql(&format!("SELECT '{}'", "x".repeat(MAX_RAW_SQL_BYTES))).is_err());
    }
}
