//! The SQL the viewer runs (Athena) or shows (local engine), and the names that go into it.
//!
//! User input never becomes SQL text: values travel as Athena execution parameters (`?`), and
//! the only names spliced into the text — database and table — come from flags and are checked
//! by [`Identifier::parse`] at start-up.

use std::fmt;

use clickheatmap_aggregator::time::{civil_from_millis, iso8601};

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

/// A SQL text and the values of its `?` placeholders, in order, as Athena execution parameters
/// (strings already quoted as SQL literals).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub sql: String,
    pub parameters: Vec<String>,
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
        let dt = |c: &clickheatmap_aggregator::time::Civil| {
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

/// The `WHERE` terms shared by the Athena queries: partitions first (so Athena prunes them),
/// then the exact window filter.
fn athena_range_terms(
    range: &QueryRange,
    max_window_ms: i64,
    parameters: &mut Vec<String>,
) -> String {
    let bounds = PartitionBounds::new(range, max_window_ms);
    parameters.extend([
        string_literal(&bounds.first_dt),
        string_literal(&bounds.last_dt),
        string_literal(&bounds.first_dt),
        string_literal(&bounds.first_hour),
        string_literal(&bounds.last_dt),
        string_literal(&bounds.last_hour),
        range.from_ms.to_string(),
        range.to_ms.to_string(),
    ]);
    "dt BETWEEN ? AND ?\n  AND (dt > ? OR hour >= ?)\n  AND (dt < ? OR hour <= ?)\n  AND window_end >= ? AND window_end < ?"
        .to_owned()
}

/// The heatmap of one page on Athena: the demo query, per page, with partition predicates.
pub fn athena_heatmap(
    table: &TableName,
    page: &PageId,
    range: &QueryRange,
    max_window_ms: i64,
) -> Statement {
    let mut parameters = vec![string_literal(page.as_str())];
    let terms = athena_range_terms(range, max_window_ms, &mut parameters);
    Statement {
        sql: format!(
            "SELECT grid_x, grid_y, SUM(clicks) AS clicks\nFROM {}\nWHERE page_id = ?\n  AND {terms}\nGROUP BY 1, 2\nORDER BY clicks DESC",
            table.quoted()
        ),
        parameters,
    }
}

/// The pages with clicks in the range on Athena, busiest first.
pub fn athena_pages(table: &TableName, range: &QueryRange, max_window_ms: i64) -> Statement {
    let mut parameters = Vec::new();
    let terms = athena_range_terms(range, max_window_ms, &mut parameters);
    Statement {
        sql: format!(
            "SELECT page_id, SUM(clicks) AS clicks\nFROM {}\nWHERE {terms}\nGROUP BY 1\nORDER BY clicks DESC, page_id\nLIMIT {MAX_PAGES}",
            table.quoted()
        ),
        parameters,
    }
}

fn local_range_terms(range: &QueryRange) -> String {
    format!(
        "window_end >= {}  -- {}\n  AND window_end < {}  -- {}",
        range.from_ms,
        iso8601(range.from_ms),
        range.to_ms,
        iso8601(range.to_ms)
    )
}

/// What the local engine computes for a heatmap, written as the equivalent SQL (values inlined:
/// the text is only shown, never parsed or run).
pub fn local_heatmap(table: &TableName, page: &PageId, range: &QueryRange) -> String {
    format!(
        "SELECT grid_x, grid_y, SUM(clicks) AS clicks\nFROM {}\nWHERE page_id = {}\n  AND {}\nGROUP BY 1, 2\nORDER BY clicks DESC;",
        table.quoted(),
        string_literal(page.as_str()),
        local_range_terms(range)
    )
}

/// What the local engine computes for the page list, as the equivalent SQL.
pub fn local_pages(table: &TableName, range: &QueryRange) -> String {
    format!(
        "SELECT page_id, SUM(clicks) AS clicks\nFROM {}\nWHERE {}\nGROUP BY 1\nORDER BY clicks DESC, page_id\nLIMIT {MAX_PAGES};",
        table.quoted(),
        local_range_terms(range)
    )
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
    fn athena_statements_use_placeholders_only() {
        let page = PageId::parse(Some("demo-page")).unwrap();
        let range = QueryRange {
            from_ms: 1_766_916_000_000,
            to_ms: 1_766_919_600_000,
        };
        let statement = athena_heatmap(&table(), &page, &range, 3_600_000);
        assert!(!statement.sql.contains("demo-page"));
        assert_eq!(
            statement.sql.matches('?').count(),
            statement.parameters.len()
        );
        assert_eq!(
            statement.parameters,
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
        let pages = athena_pages(&table(), &range, 3_600_000);
        assert_eq!(pages.sql.matches('?').count(), pages.parameters.len());
        assert!(
            pages
                .sql
                .starts_with("SELECT page_id, SUM(clicks) AS clicks")
        );
    }

    #[test]
    fn local_text_names_the_range() {
        let page = PageId::parse(Some("home")).unwrap();
        let range = QueryRange {
            from_ms: 1_766_916_000_000,
            to_ms: 1_766_919_600_000,
        };
        let sql = local_heatmap(&table(), &page, &range);
        assert!(sql.contains("WHERE page_id = 'home'"));
        assert!(sql.contains("window_end >= 1766916000000  -- 2025-12-28T10:00:00.000Z"));
        assert!(local_pages(&table(), &range).contains("GROUP BY 1"));
    }
}
