//! `job_logs`: what the workers wrote to stderr, per attempt, so any node can stream it.

use super::rows::{narrow, Columns};
use super::{Db, Result};

/// One line of a worker's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub attempt: u32,
    /// 1, 2, ... within the attempt.
    pub line_no: i64,
    pub unix_ms: i64,
    pub text: String,
}

/// Where a log stream stands: after this attempt's line (the order is attempt, then line).
pub type LogPosition = (u32, i64);

impl Db {
    /// Appends lines (one transaction; a line already stored is kept as it is).
    pub async fn insert_logs(&self, job_id: &str, lines: &[LogLine]) -> Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        with_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            for l in lines {
                sqlx::query(
                    "INSERT INTO job_logs (job_id, attempt, line_no, unix_ms, line) VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (job_id, attempt, line_no) DO NOTHING",
                )
                .bind(job_id)
                .bind(i64::from(l.attempt))
                .bind(l.line_no)
                .bind(l.unix_ms)
                .bind(&l.text)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Up to `limit` lines after `after` (from the start when `None`), in order.
    pub async fn logs(&self, job_id: &str, after: Option<LogPosition>, limit: u32) -> Result<Vec<LogLine>> {
        let (attempt, line_no) = after.map_or((0, 0), |(a, l)| (i64::from(a), l));
        with_pool!(self, |pool| {
            let rows = sqlx::query(
                "SELECT attempt, line_no, unix_ms, line FROM job_logs WHERE job_id = $1 \
                 AND (attempt > $2 OR (attempt = $2 AND line_no > $3)) ORDER BY attempt, line_no LIMIT $4",
            )
            .bind(job_id)
            .bind(attempt)
            .bind(line_no)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(LogLine {
                        attempt: narrow("log attempt", r.int("attempt")?)?,
                        line_no: r.int("line_no")?,
                        unix_ms: r.int("unix_ms")?,
                        text: r.text("line")?,
                    })
                })
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::new_job;
    use super::*;

    on_both_backends!(lines_come_back_in_order_across_attempts);

    async fn lines_come_back_in_order_across_attempts(db: Db) {
        assert!(db.insert_job(&new_job("job-a"), 100).await.unwrap());
        let line = |attempt, line_no| LogLine { attempt, line_no, unix_ms: 5, text: format!("{attempt}.{line_no}") };
        db.insert_logs("job-a", &[line(1, 1), line(1, 2), line(2, 1)]).await.unwrap();
        db.insert_logs("job-a", &[line(1, 2), line(1, 3)]).await.unwrap();
        let all = db.logs("job-a", None, 10).await.unwrap();
        let texts: Vec<&str> = all.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["1.1", "1.2", "1.3", "2.1"]);
        let rest = db.logs("job-a", Some((1, 2)), 1).await.unwrap();
        assert_eq!(rest, [line(1, 3)]);
        assert!(db.logs("job-a", Some((2, 1)), 10).await.unwrap().is_empty());
    }
}
